"""Checkpoints: save/load round trip, loading the upstream layout (§2.6 keys, scale_factor, sharded), errors."""

import json

import pytest
import torch
from safetensors.torch import save_file

from stamo_vla.vla import CheckpointError, OpenVLAForActionPrediction, build_tiny, tiny_config

BASE_VOCAB, LLM_VOCAB, HIDDEN, LAYERS, DINO, SIGLIP, DEPTH = 512, 576, 32, 2, 32, 48, 2


def upstream_key_shapes() -> dict[str, tuple]:
    """The reference §2.6 key pattern instantiated with the tiny sizes."""
    keys: dict[str, tuple] = {}
    vit = {
        "dino": ("vision_backbone.featurizer", DINO, 4 * DINO),
        "siglip": ("vision_backbone.fused_featurizer", SIGLIP, int(SIGLIP * 3.7362)),
    }
    for name, (prefix, d, mlp) in vit.items():
        patches = 256
        keys[f"{prefix}.pos_embed"] = (1, patches, d)
        keys[f"{prefix}.patch_embed.proj.weight"] = (d, 3, 14, 14)
        keys[f"{prefix}.patch_embed.proj.bias"] = (d,)
        for i in range(DEPTH):
            b = f"{prefix}.blocks.{i}"
            for norm in ("norm1", "norm2"):
                keys[f"{b}.{norm}.weight"] = keys[f"{b}.{norm}.bias"] = (d,)
            keys[f"{b}.attn.qkv.weight"], keys[f"{b}.attn.qkv.bias"] = (3 * d, d), (3 * d,)
            keys[f"{b}.attn.proj.weight"], keys[f"{b}.attn.proj.bias"] = (d, d), (d,)
            keys[f"{b}.mlp.fc1.weight"], keys[f"{b}.mlp.fc1.bias"] = (mlp, d), (mlp,)
            keys[f"{b}.mlp.fc2.weight"], keys[f"{b}.mlp.fc2.bias"] = (d, mlp), (d,)
            if name == "dino":
                keys[f"{b}.ls1.scale_factor"] = keys[f"{b}.ls2.scale_factor"] = (d,)
        keys[f"{prefix}.norm.weight"] = keys[f"{prefix}.norm.bias"] = (d,)
    f = "vision_backbone.featurizer"
    keys[f"{f}.cls_token"], keys[f"{f}.reg_token"] = (1, 1, DINO), (1, 4, DINO)
    p, mlp = "vision_backbone.fused_featurizer.attn_pool", int(SIGLIP * 3.7362)
    keys[f"{p}.latent"] = (1, 1, SIGLIP)
    for lin, shape in {
        "q": (SIGLIP, SIGLIP),
        "kv": (2 * SIGLIP, SIGLIP),
        "proj": (SIGLIP, SIGLIP),
        "mlp.fc1": (mlp, SIGLIP),
        "mlp.fc2": (SIGLIP, mlp),
    }.items():
        keys[f"{p}.{lin}.weight"], keys[f"{p}.{lin}.bias"] = shape, (shape[0],)
    keys[f"{p}.norm.weight"] = keys[f"{p}.norm.bias"] = (SIGLIP,)
    v = DINO + SIGLIP
    for name, shape in {"fc1": (4 * v, v), "fc2": (HIDDEN, 4 * v), "fc3": (HIDDEN, HIDDEN)}.items():
        keys[f"projector.{name}.weight"], keys[f"projector.{name}.bias"] = shape, (shape[0],)
    lm = "language_model.model"
    keys[f"{lm}.embed_tokens.weight"] = keys["language_model.lm_head.weight"] = (LLM_VOCAB, HIDDEN)
    keys[f"{lm}.norm.weight"] = (HIDDEN,)
    for i in range(LAYERS):
        b = f"{lm}.layers.{i}"
        for proj in ("q", "k", "v", "o"):
            keys[f"{b}.self_attn.{proj}_proj.weight"] = (HIDDEN, HIDDEN)
        keys[f"{b}.mlp.gate_proj.weight"] = keys[f"{b}.mlp.up_proj.weight"] = (2 * HIDDEN, HIDDEN)
        keys[f"{b}.mlp.down_proj.weight"] = (HIDDEN, 2 * HIDDEN)
        keys[f"{b}.input_layernorm.weight"] = keys[f"{b}.post_attention_layernorm.weight"] = (HIDDEN,)
    return keys


def write_upstream_dir(model, directory, shards=3, stats=None):
    """Write config.json + sharded safetensors + index the way the upstream conversion did (by hand)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config["text_config"] = {
        k: config["text_config"][k]
        for k in (
            "model_type",
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "pad_token_id",
        )
    }
    config.update(
        auto_map={"AutoConfig": "configuration_prismatic.OpenVLAConfig"},
        torch_dtype="float32",
        hf_llm_id="meta-llama/Llama-2-7b-hf",
    )
    (directory / "config.json").write_text(json.dumps(config))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    names = sorted(state)
    weight_map = {}
    for s in range(shards):
        part = names[s::shards]
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k] for k in part}, str(directory / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in part})
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    if stats is not None:
        (directory / "dataset_statistics.json").write_text(json.dumps(stats))


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 200, (2, 12), generator=g)
    ids[:, 0] = 1
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(2, 6, 224, 224, generator=g),
    }


def test_state_dict_matches_upstream_pattern():
    model, _ = build_tiny()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == upstream_key_shapes()


def test_save_load_round_trip_identical_logits(tmp_path):
    model, _ = build_tiny(tmp_path / "ck", seed=3)
    loaded = OpenVLAForActionPrediction.from_pretrained(tmp_path / "ck")
    with torch.no_grad():
        a, b = model(**_inputs()).logits, loaded(**_inputs()).logits
    assert torch.equal(a, b)
    files = {p.name for p in (tmp_path / "ck").iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "tokenizer.json",
        "generation_config.json",
        "dataset_statistics.json",
    } <= files


def test_save_checkpoint_shards_with_index(tmp_path):
    from stamo_vla.vla import save_checkpoint

    model, processor = build_tiny(seed=5)
    save_checkpoint(model, processor, tmp_path / "ck", max_shard_size="200KB")
    index = json.loads((tmp_path / "ck" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and set(index["weight_map"]) == set(
        upstream_key_shapes()
    )
    loaded = OpenVLAForActionPrediction.from_pretrained(tmp_path / "ck")
    with torch.no_grad():
        assert torch.equal(model(**_inputs()).logits, loaded(**_inputs()).logits)


def test_load_upstream_layout_sharded_no_missing_or_unexpected(tmp_path):
    model, _ = build_tiny(seed=1)
    stats = {
        "libero_spatial": {"action": {"q01": [-1.0] * 7, "q99": [2.0] * 7, "mask": [True] * 6 + [False]}}
    }
    write_upstream_dir(model, tmp_path / "up", stats=stats)
    loaded, info = OpenVLAForActionPrediction.from_pretrained(tmp_path / "up", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert set(loaded.state_dict()) == set(upstream_key_shapes())
    assert loaded.norm_stats == stats  # dataset_statistics.json overrides config.norm_stats
    assert loaded.config.hf_llm_id == "meta-llama/Llama-2-7b-hf"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    block = loaded.vision_backbone.featurizer.blocks[0]
    assert torch.equal(
        block.ls1.scale_factor, model.state_dict()["vision_backbone.featurizer.blocks.0.ls1.scale_factor"]
    )


def test_single_file_without_statistics_keeps_config_stats(tmp_path):
    model, _ = build_tiny(seed=2)
    write_upstream_dir(model, tmp_path / "one", shards=1)
    (tmp_path / "one" / "model-00001-of-00001.safetensors").rename(tmp_path / "one" / "model.safetensors")
    (tmp_path / "one" / "model.safetensors.index.json").unlink()
    loaded = OpenVLAForActionPrediction.from_pretrained(tmp_path / "one")
    assert loaded.norm_stats == tiny_config().norm_stats


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OpenVLAForActionPrediction.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        OpenVLAForActionPrediction.from_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="model_type='llama'"):
        OpenVLAForActionPrediction.from_pretrained(tmp_path / "empty")
    tiny_config().save_pretrained(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no weights"):
        OpenVLAForActionPrediction.from_pretrained(tmp_path / "empty")


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    model, _ = build_tiny()
    write_upstream_dir(model, tmp_path / "ck", shards=2)
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    config["text_config"]["hidden_size"] = 64
    (tmp_path / "ck" / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError,
        match=r"language_model\.lm_head\.weight: checkpoint \(576, 32\) vs config \(576, 64\)",
    ):
        OpenVLAForActionPrediction.from_pretrained(tmp_path / "ck")


def test_missing_key_is_reported(tmp_path):
    model, _ = build_tiny()
    directory = tmp_path / "ck"
    write_upstream_dir(model, directory, shards=1)
    from safetensors.torch import load_file

    file = directory / "model-00001-of-00001.safetensors"
    state = load_file(str(file))
    state.pop("projector.fc3.bias")
    state["vision_backbone.featurizer.blocks.0.ls1.gamma"] = torch.ones(32)
    save_file(state, str(file), metadata={"format": "pt"})
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: file.name for k in state}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(
        CheckpointError, match=r"missing key\(s\): \['projector.fc3.bias'\].*unexpected.*ls1.gamma"
    ):
        OpenVLAForActionPrediction.from_pretrained(directory)


@pytest.mark.slow
def test_default_config_matches_openvla_7b_layout():
    """openvla-7b on the meta device: reference §2.6 counts (982 tensors, 7,541,237,184 parameters)."""
    import math

    from stamo_vla.vla import OpenVLAConfig
    from stamo_vla.vla.loading import expected_shapes

    shapes = expected_shapes(OpenVLAConfig())
    assert len(shapes) == 982 and sum(math.prod(s) for s in shapes.values()) == 7_541_237_184
    parts = {
        "vision_backbone.featurizer.": 303_230_976,
        "vision_backbone.fused_featurizer.": 427_680_704,
        "projector.": 71_385_600,
        "language_model.": 6_738_939_904,
    }
    for prefix, count in parts.items():
        assert sum(math.prod(s) for k, s in shapes.items() if k.startswith(prefix)) == count, prefix
    assert shapes["vision_backbone.featurizer.blocks.23.ls2.scale_factor"] == (1024,)
    assert shapes["vision_backbone.fused_featurizer.attn_pool.kv.weight"] == (2304, 1152)
