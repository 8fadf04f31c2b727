"""The adapter on a second, different causal VLA (a tiny transformers Llava): no OpenVLA code involved."""

import pytest
import torch

from stamo_vla import keys as K
from stamo_vla.adapter import StaMoAdapterConfig, attach, load_adapter, save_adapter
from stamo_vla.adapter.attach import frozen_state_digest
from stamo_vla.adapter.lora import resolve_lora_targets

VOCAB = 600  # base vocab; ids 344..599 are action tokens, the image token sits after the base vocab
IMAGE_TOKEN = 600
N_IMG = 16
STATS = {"toy": {"action": {"q01": [-1.0] * 7, "q99": [1.0] * 7, "mask": [True] * 6 + [False]}}}


def tiny_llava(seed=0):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    vc = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    tc = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=VOCAB + 8,
    )
    cfg = LlavaConfig(
        vision_config=vc, text_config=tc, image_token_id=IMAGE_TOKEN, vision_feature_select_strategy="default"
    )
    cfg.vision_feature_layer = -1
    model = LlavaForConditionalGeneration(cfg).eval()
    model.action_vocab_size = VOCAB
    return model


def toy_batch(batch_size=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, 300, (batch_size, 6), generator=g)
    actions = torch.randint(VOCAB - 256, VOCAB, (batch_size, 7), generator=g)
    ids = torch.cat(
        [
            torch.ones(batch_size, 1, dtype=torch.long),
            torch.full((batch_size, N_IMG), IMAGE_TOKEN),
            prompt,
            actions,
            torch.full((batch_size, 1), 2),
        ],
        dim=1,
    )
    labels = torch.full_like(ids, K.IGNORE_INDEX)
    labels[:, -8:] = ids[:, -8:]
    return {
        K.INPUT_IDS: ids,
        K.ATTENTION_MASK: torch.ones_like(ids, dtype=torch.bool),
        K.LABELS: labels,
        K.PIXEL_VALUES: torch.randn(batch_size, 3, 32, 32, generator=g),
        K.FUTURE_STATE: torch.randn(batch_size, 2, 8, generator=g),
        K.STATE: torch.randn(batch_size, 2, 8, generator=g),
    }


def small_cfg(**kw):
    base = dict(
        target="state",
        head_width=16,
        lora_rank=4,
        lora_target_modules="all-linear",
    )
    return StaMoAdapterConfig(**{**base, **kw})


def test_only_lora_and_head_train_and_base_stays_bit_identical():
    model = attach(tiny_llava(), small_cfg(), target_shape=(2, 8))
    before = frozen_state_digest(model.vla)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert any(n.startswith("head.") for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = toy_batch()
    for _ in range(3):
        loss, metrics = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert frozen_state_digest(model.vla) == before
    for key in (
        "loss",
        "loss_action",
        "action_accuracy",
        "action_l1",
        "future_mse",
        "future_l1",
        "future_cosine",
    ):
        assert key in metrics


def test_loss_is_weighted_sum_of_action_and_future_losses():
    model = attach(tiny_llava(), small_cfg(lambda_action=1.0, lambda_future=0.5), target_shape=(2, 8))
    loss, m = model(toy_batch())
    assert loss.item() == pytest.approx(m["loss_action"] + 0.5 * (m["future_mse"] + m["future_l1"]), rel=1e-5)


def test_motion_target_is_future_minus_current():
    model = attach(tiny_llava(), small_cfg(target="motion"), target_shape=(2, 8))
    batch = toy_batch()
    assert torch.equal(model.targets(batch), batch[K.FUTURE_STATE] - batch[K.STATE])


def test_target_none_is_plain_lora_without_head():
    model = attach(tiny_llava(), small_cfg(target="none"), target_shape=(2, 8))
    assert model.head is None
    _, metrics = model(toy_batch())
    assert "future_mse" not in metrics


def test_action_free_rows_contribute_no_action_loss():
    model = attach(tiny_llava(), small_cfg(), target_shape=(2, 8))
    batch = toy_batch()
    prompt_length = torch.full((3,), batch[K.INPUT_IDS].shape[1] - 8)
    free = {**batch, K.HAS_ACTION: torch.tensor([False, False, False]), K.PROMPT_LENGTH: prompt_length}
    loss, metrics = model(free)
    assert metrics["loss_action"] == 0.0
    assert metrics["future_mse"] > 0
    loss.backward()
    assert model.head.mlp[-1].weight.grad.abs().sum() > 0


def test_readout_reads_the_position_before_the_first_action_token():
    model = attach(tiny_llava(), small_cfg(), target_shape=(2, 8))
    batch = toy_batch()
    prompt_length = torch.full((3,), batch[K.INPUT_IDS].shape[1] - 8)
    # the same readout whether it is located from the labels or from the explicit prompt length
    loss_a, _ = model(batch)
    loss_b, _ = model({**batch, K.PROMPT_LENGTH: prompt_length})
    assert loss_a.item() == loss_b.item()


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    model = attach(tiny_llava(), small_cfg(), target_shape=(2, 8))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    model.eval()
    batch = toy_batch()
    loss, metrics = model(batch)
    save_adapter(model, tmp_path / "adapter", dataset_statistics=STATS)
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "stamo_head.safetensors",
        "stamo_adapter_config.json",
        "dataset_statistics.json",
    } <= files
    loaded = load_adapter(tiny_llava(), tmp_path / "adapter").eval()
    loss2, metrics2 = loaded(batch)
    assert loss2.item() == loss.item()
    assert metrics2 == metrics


def test_adapter_for_a_different_base_is_refused(tmp_path):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    model = attach(tiny_llava(), small_cfg(), target_shape=(2, 8))
    save_adapter(model, tmp_path / "adapter", dataset_statistics=STATS)
    vc = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    tc = LlamaConfig(
        hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=VOCAB + 8
    )
    other = LlavaForConditionalGeneration(
        LlavaConfig(vision_config=vc, text_config=tc, image_token_id=IMAGE_TOKEN)
    )
    with pytest.raises(ValueError, match="different base model"):
        load_adapter(other, tmp_path / "adapter")


def test_missing_statistics_and_unknown_target_are_clear_errors(tmp_path):
    model = attach(tiny_llava(), small_cfg(), target_shape=(2, 8))
    with pytest.raises(ValueError, match="dataset statistics"):
        save_adapter(model, tmp_path / "a")
    with pytest.raises(
        ValueError,
        match=r"target='states' is not valid; allowed: \['state', 'motion', 'features', 'untrained', 'none'\]",
    ):
        StaMoAdapterConfig(target="states")


def test_lora_target_presets():
    model = tiny_llava()
    upstream = resolve_lora_targets(model, "openvla-upstream")
    modern = resolve_lora_targets(model, "all-linear")
    assert "lm_head" in upstream and "lm_head" not in modern
    assert set(modern) < set(upstream)
    with pytest.raises(ValueError, match="match no module"):
        resolve_lora_targets(model, ["nonexistent_proj"])


@pytest.mark.slow
def test_decoder_loss_trains_the_head_through_the_frozen_decoder():
    from stamo_vla.stamo import StaMoAutoencoder, tiny_config

    torch.manual_seed(0)
    stamo = StaMoAutoencoder(tiny_config())
    model = attach(
        tiny_llava(),
        small_cfg(lambda_decoder=1.0),
        stamo_encoder=stamo.encoder,
        stamo_decoder=stamo.decoder,
    )
    batch = toy_batch()
    batch[K.FUTURE_STATE] = torch.randn(3, 2, 64)
    batch[K.FUTURE_STAMO_PIXELS] = torch.rand(3, 3, 64, 64)
    before = {k: v.clone() for k, v in stamo.decoder.state_dict().items()}
    loss, metrics = model(batch)
    assert metrics["loss_decoder"] > 0
    loss.backward()
    assert model.head.mlp[-1].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in stamo.decoder.parameters())
    assert all(torch.equal(v, stamo.decoder.state_dict()[k]) for k, v in before.items())
