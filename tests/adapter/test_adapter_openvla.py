"""The adapter on our OpenVLA implementation: merge equivalence, merged checkpoints, inference paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stamo_vla import keys as K
from stamo_vla.adapter import StaMoAdapterConfig, attach, load_adapter, merge, save_adapter
from stamo_vla.adapter.merge_cli import main as merge_main


def tiny_openvla(tmp_path=None):
    from stamo_vla.vla import build_tiny

    return build_tiny(save_dir=tmp_path, seed=0)


def batch_for(processor, n=2, seed=0):
    from stamo_vla.vla import ActionTokenizer, OpenVLABatchTransform

    rng = np.random.default_rng(seed)
    tokenizer = ActionTokenizer(512)
    transform = OpenVLABatchTransform(processor, tokenizer)
    samples = [
        {
            K.IMAGE: rng.integers(0, 255, (224, 224, 3), dtype=np.uint8),
            K.INSTRUCTION: ["pick up the bowl", "open the top drawer of the cabinet"][i % 2],
            K.ACTION: rng.uniform(-1, 1, (1, 7)).astype(np.float32),
            K.FUTURE_STATE: rng.normal(size=(2, 16)).astype(np.float32),
        }
        for i in range(n)
    ]
    return transform.collate_samples(samples)


SHAPE = (2, 16)  # (num_state_tokens, state_dim) of a head attached without an encoder


def cfg(**kw):
    return StaMoAdapterConfig(**{**dict(target="state", head_width=16, lora_rank=4), **kw})


def randomize_lora(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)


def test_merged_model_matches_base_plus_adapter_and_loads_with_the_policy_loader(tmp_path):
    from stamo_vla.vla import OpenVLAForActionPrediction

    base, processor = tiny_openvla(tmp_path / "base")
    model = attach(base, cfg(), target_shape=SHAPE)
    randomize_lora(model)
    model.eval()
    batch = batch_for(processor)
    with torch.no_grad():
        ref = model.vla(
            input_ids=batch[K.INPUT_IDS],
            attention_mask=batch[K.ATTENTION_MASK],
            pixel_values=batch[K.PIXEL_VALUES],
        ).logits
        ref_loss, ref_metrics = model(batch)
    out = merge(model, tmp_path / "merged", processor=processor)
    merged = OpenVLAForActionPrediction.from_pretrained(out).eval()
    with torch.no_grad():
        logits = merged(
            input_ids=batch[K.INPUT_IDS],
            attention_mask=batch[K.ATTENTION_MASK],
            pixel_values=batch[K.PIXEL_VALUES],
        ).logits
    # merging folds W + (alpha/r) B A into W: equal up to float32 rounding
    assert torch.allclose(logits, ref, atol=1e-5, rtol=1e-4)
    restored = load_adapter(merged, out).eval()
    with torch.no_grad():
        loss, metrics = restored(batch)
    assert loss.item() == pytest.approx(ref_loss.item(), abs=1e-5)
    assert metrics["future_mse"] == pytest.approx(ref_metrics["future_mse"], abs=1e-6)


def test_merge_command_writes_the_upstream_layout(tmp_path):
    from stamo_vla.vla import OpenVLAForActionPrediction

    base, _ = tiny_openvla(tmp_path / "base")
    model = attach(base, cfg(), target_shape=SHAPE)
    randomize_lora(model)
    save_adapter(model, tmp_path / "adapter")
    assert (
        merge_main(
            [
                "--vla_path",
                str(tmp_path / "base"),
                "--adapter_dir",
                str(tmp_path / "adapter"),
                "--output_dir",
                str(tmp_path / "merged"),
            ]
        )
        == 0
    )
    names = {p.name for p in (tmp_path / "merged").iterdir()}
    assert {
        "config.json",
        "dataset_statistics.json",
        "stamo_head.safetensors",
        "stamo_adapter_config.json",
        "preprocessor_config.json",
    } <= names
    assert any(n.endswith(".safetensors") and n.startswith("model") for n in names)
    merged = OpenVLAForActionPrediction.from_pretrained(tmp_path / "merged")
    assert not any("lora" in k for k in merged.state_dict())


def test_frozen_base_is_bit_identical_after_training_steps():
    from stamo_vla.adapter.attach import frozen_state_digest

    base, processor = tiny_openvla()
    model = attach(base, cfg(target="motion"), target_shape=SHAPE)
    batch = batch_for(processor, n=3)
    batch[K.STATE] = torch.randn(3, 2, 16)
    before = frozen_state_digest(model.vla)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    for _ in range(2):
        loss, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert frozen_state_digest(model.vla) == before
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("head.") for n in trainable)


def test_predict_action_is_unchanged_without_the_head_and_returns_future_states_with_it():
    from stamo_vla.stamo import StaMoAutoencoder, tiny_config
    from stamo_vla.vla import build_prompt

    torch.manual_seed(0)
    stamo = StaMoAutoencoder(tiny_config()).eval()
    base, processor = tiny_openvla()
    model = attach(base, cfg(target="motion"), stamo_encoder=stamo.encoder, stamo_decoder=stamo.decoder)
    randomize_lora(model)
    model.eval()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for _ in range(2)]
    inputs = processor([build_prompt("pick up the bowl"), build_prompt("open the drawer")], images)
    args = (inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])
    plain = model.predict_action(*args)
    direct = model.vla.predict_action(*args)  # LoRA active, no head
    assert np.array_equal(plain, direct)
    stamo_pixels = torch.rand(2, 3, 64, 64)
    actions, future = model.predict_action(*args, return_future_state=True, stamo_pixels=stamo_pixels)
    assert np.array_equal(actions, plain)
    assert future.shape == (2, 2, 64)
    current = stamo.encoder.encode(stamo_pixels)
    _, again = model.predict_action(*args, return_future_state=True, current_state=current)
    assert torch.allclose(again, future)
    frames = model.decode_future(future, steps=2)
    assert frames.shape == (2, 3, 64, 64) and float(frames.min()) >= 0 and float(frames.max()) <= 1
    with pytest.raises(ValueError, match="pass current_state or stamo_pixels"):
        model.predict_action(*args, return_future_state=True)


def test_readout_hidden_state_matches_training_position():
    """The inference readout (prefill, last prompt position) equals the training readout (labels)."""
    from stamo_vla.adapter.losses import readout_positions

    base, processor = tiny_openvla()
    model = attach(base, cfg(target="state"), target_shape=SHAPE)
    randomize_lora(model)
    model.eval()
    batch = batch_for(processor, n=2)
    with torch.no_grad():
        out = model.vla(
            input_ids=batch[K.INPUT_IDS],
            attention_mask=batch[K.ATTENTION_MASK],
            pixel_values=batch[K.PIXEL_VALUES],
            output_hidden_states=True,
        )
        hidden = out.hidden_states[-1]
        pos = readout_positions(batch[K.LABELS], hidden.shape[1])
        train_readout = hidden[torch.arange(2), pos]
        prompt_len = (batch[K.LABELS] == K.IGNORE_INDEX).sum(1) - (~batch[K.ATTENTION_MASK]).sum(1)
        ids = [batch[K.INPUT_IDS][i, : int(prompt_len[i])] for i in range(2)]
        longest = max(len(x) for x in ids)
        padded = torch.stack([torch.cat([x, x.new_full((longest - len(x),), 512)]) for x in ids])
        mask = torch.stack([torch.arange(longest) < len(x) for x in ids])
        _, infer_readout = base.predict_action(batch[K.PIXEL_VALUES], padded, mask, return_hidden=True)
    assert torch.allclose(train_readout, infer_readout, atol=1e-5)


def test_live_stamo_encoder_stays_frozen_and_bit_identical():
    from stamo_vla.adapter.attach import frozen_state_digest
    from stamo_vla.stamo import StaMoEncoder, fingerprint, tiny_config

    torch.manual_seed(0)
    encoder = StaMoEncoder(tiny_config())
    before = fingerprint(encoder)
    base, processor = tiny_openvla()
    model = attach(base, cfg(target="motion"), stamo_encoder=encoder)
    batch = batch_for(processor, n=2)
    batch.pop(K.FUTURE_STATE)
    batch[K.STAMO_PIXELS], batch[K.FUTURE_STAMO_PIXELS] = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    base_before = frozen_state_digest(model.vla)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    for _ in range(2):
        loss, metrics = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert metrics["future_mse"] > 0
    assert fingerprint(encoder) == before and frozen_state_digest(model.vla) == base_before
    assert all(p.grad is None and not p.requires_grad for p in encoder.parameters())
    assert not any(
        n.startswith("encoder") for n in dict(model.named_parameters())
    )  # never saved or optimized
