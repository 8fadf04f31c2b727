"""OpenVLAConfig: reading the upstream config.json, Llama defaults, validation, auto-class registration."""

import json

import pytest

from stamo_vla.vla import OpenVLAConfig, tiny_config

# the fields of openvla/openvla-7b's config.json (reference §2.1); text_config stores only non-defaults
UPSTREAM_CONFIG = {
    "arch_specifier": "no-align+fused-gelu-mlp",
    "architectures": ["OpenVLAForActionPrediction"],
    "auto_map": {
        "AutoConfig": "configuration_prismatic.OpenVLAConfig",
        "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction",
    },
    "hf_llm_id": "meta-llama/Llama-2-7b-hf",
    "image_resize_strategy": "resize-naive",
    "image_sizes": [224, 224],
    "llm_backbone_id": "llama2-7b-pure",
    "llm_max_length": 2048,
    "model_type": "openvla",
    "n_action_bins": 256,
    "norm_stats": {
        "bridge_orig": {"action": {"q01": [0.0] * 7, "q99": [1.0] * 7, "mask": [True] * 6 + [False]}}
    },
    "output_projector_states": False,
    "pad_to_multiple_of": 64,
    "pad_token_id": 32000,
    "text_config": {
        "model_type": "llama",
        "pad_token_id": 32000,
        "torch_dtype": "bfloat16",
        "vocab_size": 32064,
    },
    "timm_model_ids": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
    "timm_override_act_layers": [None, None],
    "torch_dtype": "bfloat16",
    "transformers_version": "4.40.1",
    "use_fused_vision_backbone": True,
    "vision_backbone_id": "dinosiglip-vit-so-224px",
}


def test_upstream_config_json_gets_openvla_llama_defaults(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(UPSTREAM_CONFIG))
    cfg = OpenVLAConfig.from_pretrained(tmp_path)
    text = cfg.text_config
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (4096, 11008, 32)
    assert (text.num_attention_heads, text.num_key_value_heads) == (32, 32)
    assert text.rms_norm_eps == 1e-6 and text.max_position_embeddings == 2048
    assert text.rope_parameters["rope_theta"] == 10000.0
    assert text.tie_word_embeddings is False and text.vocab_size == 32064
    assert cfg.base_vocab_size == 32000 and cfg.empty_token_id == 29871
    assert cfg.norm_stats["bridge_orig"]["action"]["q99"] == [1.0] * 7
    assert cfg.hf_llm_id == "meta-llama/Llama-2-7b-hf"  # unknown upstream fields are kept


def test_explicit_text_config_values_win():
    cfg = OpenVLAConfig(text_config={"model_type": "llama", "rms_norm_eps": 1e-5, "vocab_size": 1000})
    assert cfg.text_config.rms_norm_eps == 1e-5 and cfg.text_config.max_position_embeddings == 2048


def test_derived_fields_and_round_trip(tmp_path):
    cfg = tiny_config()
    assert cfg.use_fused_vision_backbone is True and cfg.image_sizes == [224, 224]
    cfg.save_pretrained(tmp_path)
    back = OpenVLAConfig.from_pretrained(tmp_path)
    assert back.to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("vision_backbone_id", "resnet", "vision_backbone_id"),
        ("arch_specifier", "linear", "arch_specifier"),
        ("image_resize_strategy", "crop", "image_resize_strategy"),
        ("n_action_bins", 1, "n_action_bins"),
        ("timm_model_kwargs", [{}], "timm_model_kwargs"),
    ],
)
def test_validation_names_field(field, value, needle):
    with pytest.raises(ValueError, match=needle):
        OpenVLAConfig(**{field: value})


def test_auto_classes_registered(tmp_path):
    from transformers import AutoConfig, AutoModelForImageTextToText

    from stamo_vla.vla import OpenVLAForActionPrediction, register_auto_classes

    register_auto_classes()
    register_auto_classes()  # idempotent
    tiny_config().save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), OpenVLAConfig)
    model = AutoModelForImageTextToText.from_config(tiny_config())
    assert isinstance(model, OpenVLAForActionPrediction)


def test_model_import_stays_free_of_heavy_optional_modules():
    import subprocess
    import sys

    code = (
        "import sys; from stamo_vla.vla import build_tiny; build_tiny();"
        "print([m for m in ('tensorflow', 'libero', 'diffusers', 'bitsandbytes') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
