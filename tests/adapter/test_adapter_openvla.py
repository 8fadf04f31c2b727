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


def cfg(**kw):
    return StaMoAdapterConfig(
        **{**dict(target="state", num_state_tokens=2, state_dim=16, head_width=16, lora_rank=4), **kw}
    )


def randomize_lora(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)


def test_merged_model_matches_base_plus_adapter_and_loads_with_the_policy_loader(tmp_path):
    from stamo_vla.vla import OpenVLAForActionPrediction

    base, processor = tiny_openvla(tmp_path / "base")
    model = attach(base, cfg())
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
    model = attach(base, cfg())
    randomize_lora(model)
    save_adapter(model, tmp_path / "adapter")
    assert (
        merge_main(
            [
                "--base",
                str(tmp_path / "base"),
                "--adapter",
                str(tmp_path / "adapter"),
                "--out",
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
    model = attach(base, cfg(target="motion"))
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
