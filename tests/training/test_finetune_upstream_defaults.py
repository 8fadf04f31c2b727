"""Bare `FinetuneConfig` defaults and the paper presets are upstream OpenVLA's / OpenVLA-OFT's recipe."""

from __future__ import annotations

import pytest

from stamo_vla.configs import parse_config
from stamo_vla.training.finetune_config import FinetuneConfig

PAPER = {"paper": 50_000, "paper_object": 50_000, "paper_goal": 60_000, "paper_10": 80_000}


def upstream_fields(cfg: FinetuneConfig) -> dict:
    """Every field upstream's finetune.py / LIBERO model cards fix (the dataset and step count aside)."""
    return {
        "lr": cfg.optim.lr,
        "weight_decay": cfg.optim.weight_decay,
        "betas": tuple(cfg.optim.betas),
        "eps": cfg.optim.eps,
        "warmup": cfg.optim.warmup_steps,
        "decay": cfg.optim.decay,
        "max_grad_norm": cfg.optim.max_grad_norm,
        "batch_size": cfg.batch_size,
        "grad_accumulation_steps": cfg.grad_accumulation_steps,
        "image_aug": cfg.data.image_aug,
        "shuffle_buffer_size": cfg.data.shuffle_buffer_size,
        "split": cfg.data.tfds_split,
        "lora": (
            cfg.adapter.lora_rank,
            cfg.adapter.effective_lora_alpha,
            cfg.adapter.lora_dropout,
            cfg.adapter.lora_init,
            cfg.adapter.lora_target_modules,
        ),
        "load_in_4bit": cfg.load_in_4bit,
    }


UPSTREAM = {
    "lr": 5e-4,
    "weight_decay": 0.01,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "warmup": 0,
    "decay": "constant",
    "max_grad_norm": None,  # upstream never clips
    "batch_size": 16,
    "grad_accumulation_steps": 1,
    "image_aug": True,
    "shuffle_buffer_size": 100_000,
    "split": "train[:95%]",
    "lora": (32, 16, 0.0, "gaussian", "openvla-upstream"),
    "load_in_4bit": False,
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_presets_parse_to_upstream_numbers_and_the_bare_defaults_equal_them(name):
    cfg = parse_config(FinetuneConfig, ["--config", name, "--stamo_path", "/x"], prefix="finetune_")
    assert upstream_fields(cfg) == UPSTREAM and cfg.max_steps == PAPER[name]
    bare = FinetuneConfig(stamo_path="/x")
    assert upstream_fields(bare) == upstream_fields(cfg)
    # the StaMo head is the only addition; target none is the upstream baseline itself
    assert (
        bare.adapter.has_head
        and not FinetuneConfig(adapter=type(bare.adapter)(target="none")).adapter.has_head
    )


def test_overriding_one_field_keeps_the_other_upstream_defaults():
    cfg = parse_config(FinetuneConfig, ["--stamo_path", "/x", "--optim.lr", "1e-4", "--data.seed", "3"])
    assert cfg.optim.lr == 1e-4 and cfg.optim.max_grad_norm is None and cfg.optim.weight_decay == 0.01
    assert cfg.data.image_aug and cfg.data.shuffle_buffer_size == 100_000


def test_oft_paper_preset_is_openvla_oft_libero():
    cfg = parse_config(FinetuneConfig, ["--config", "oft_paper", "--stamo_path", "/x"], prefix="finetune_")
    assert cfg.optim.max_grad_norm is None and cfg.data.tfds_split == "train[:100%]"
    assert (cfg.optim.lr, cfg.optim.decay, cfg.optim.decay_step_size, cfg.optim.decay_gamma) == (
        5e-4,
        "step",
        100_000,
        0.1,
    )
    assert (cfg.batch_size, cfg.max_steps, cfg.data.image_aug) == (8, 150_005, True)
    head = cfg.adapter.action_head
    assert (head.action_chunk, head.num_images, head.use_proprio) == (8, 2, True)
    assert head.name == "l1" and cfg.data.action_chunk == 8


def test_the_adapter_records_whether_training_augmented():
    assert FinetuneConfig(stamo_path="/x").provenance().trained_with_image_aug is True
    tiny = parse_config(FinetuneConfig, ["--config", "tiny", "--stamo_path", "/x"], prefix="finetune_")
    assert tiny.data.image_aug is False and tiny.provenance().trained_with_image_aug is False


def test_qlora_is_nf4_with_bf16_compute():
    pytest.importorskip("bitsandbytes")
    import torch

    from stamo_vla.vla.loading import qlora_quantization_config

    q = qlora_quantization_config()
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_compute_dtype == torch.bfloat16


def test_finetune_loads_the_base_for_qlora_as_nf4_bf16(monkeypatch, tmp_path):
    pytest.importorskip("bitsandbytes")
    import types

    import torch

    from stamo_vla.training import finetune
    from stamo_vla.vla import OpenVLAForActionPrediction, OpenVLAProcessor

    seen = {}

    def fake_load(path, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop after the kwargs")

    monkeypatch.setattr(OpenVLAForActionPrediction, "from_pretrained", fake_load)
    monkeypatch.setattr(OpenVLAProcessor, "from_pretrained", lambda path: None)
    cfg = FinetuneConfig(vla_path=str(tmp_path), stamo_path="/x", load_in_4bit=True)
    accelerator = types.SimpleNamespace(device=torch.device("cpu"), is_main_process=True)
    with pytest.raises(RuntimeError, match="stop after the kwargs"):
        finetune.load_base(cfg, tmp_path, accelerator)
    q = seen["quantization_config"]
    assert q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_compute_dtype == torch.bfloat16
