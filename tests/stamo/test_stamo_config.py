import json

import pytest

from stamo_vla.configs import parse_config
from stamo_vla.data.stamo_frames import RLDSSource, SyntheticSource
from stamo_vla.stamo.configuration_stamo import (
    BackboneConfig,
    CompressorConfig,
    FlowMatchingConfig,
    StaMoConfig,
    VAEConfig,
    paper_config,
    tiny_config,
)
from stamo_vla.training.stamo_pretrain import PretrainStaMoConfig


def test_round_trip_through_config_json(tmp_path):
    cfg = tiny_config()
    cfg.save(tmp_path)
    assert StaMoConfig.load(tmp_path) == cfg
    assert paper_config("/a", "/b") == StaMoConfig.from_dict(paper_config("/a", "/b").to_dict())


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda: FlowMatchingConfig(sigma_sampling="cosine"),
            r"sigma_sampling='cosine' is not valid; allowed: \['logit_normal', 'uniform'\]",
        ),
        (lambda: BackboneConfig(dtype="int8"), r"backbone.dtype='int8' is not valid"),
        (
            lambda: BackboneConfig(image_size=100, patch_size=14),
            r"backbone.image_size=100 must be divisible by backbone.patch_size=14",
        ),
        (
            lambda: CompressorConfig(hidden_size=30, num_heads=4),
            r"compressor.hidden_size=30 must be divisible",
        ),
        (lambda: VAEConfig(block_out_channels=(8, 12), norm_num_groups=8), r"block_out_channels entry=12"),
        (lambda: StaMoConfig(num_state_tokens=0), r"num_state_tokens=0 is not valid"),
    ],
)
def test_invalid_fields_name_field_and_value(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_load_rejects_unknown_fields_and_foreign_json(tmp_path):
    data = {"_stamo_format": 1, **tiny_config().to_dict(), "num_tokens": 4}
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="num_tokens"):
        StaMoConfig.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="Is it a StaMo checkpoint"):
        StaMoConfig.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="No StaMo config.json"):
        StaMoConfig.load(tmp_path / "missing")


def test_presets_parse_to_the_documented_settings():
    tiny = parse_config(PretrainStaMoConfig, ["--config", "tiny"], prefix="pretrain_stamo_")
    expected = tiny_config()  # the test model, plus the preset's documented departures (issue 12)
    expected.state_bottleneck = "batch_norm"
    expected.compressor.num_layers = 2
    expected.compressor.position_features = "sincos_2d"
    assert tiny.model == expected
    assert (tiny.vae_fit_steps, tiny.max_steps, tiny.gap_check_step) == (700, 5000, 500)
    assert isinstance(tiny.source, SyntheticSource)
    paper = parse_config(
        PretrainStaMoConfig, ["--config", "paper", "--max_steps", "7"], prefix="pretrain_stamo_"
    )
    assert paper.max_steps == 7
    assert (paper.model.num_state_tokens, paper.model.state_dim, paper.model.image_size) == (2, 1024, 256)
    assert paper.model.backbone.pretrained_path.endswith("dinov2-large")
    assert paper.model.decoder.transformer.pretrained_path.endswith("/transformer")
    assert isinstance(paper.source, RLDSSource)


def test_pretrain_config_validation():
    with pytest.raises(ValueError, match="num_heldout=1"):
        PretrainStaMoConfig(num_heldout=1)
    with pytest.raises(ValueError, match=r"mixed_precision='fp8' is not valid"):
        PretrainStaMoConfig(mixed_precision="fp8")
    with pytest.raises(ValueError, match="cameras entry 'depth'"):
        RLDSSource(cameras=["depth"])
    with pytest.raises(ValueError, match="heldout_groups=0 is not valid"):
        PretrainStaMoConfig(heldout_groups=0)


def test_new_model_fields_are_validated():
    from stamo_vla.stamo.configuration_stamo import CompressorConfig, StaMoConfig

    with pytest.raises(
        ValueError, match=r"state_bottleneck='layer' is not valid; allowed: \['none', 'batch_norm'\]"
    ):
        StaMoConfig(state_bottleneck="layer")
    with pytest.raises(ValueError, match="state_bottleneck_momentum=0 is not valid"):
        StaMoConfig(state_bottleneck_momentum=0)
    with pytest.raises(ValueError, match="compressor.position_features='learned' is not valid"):
        CompressorConfig(position_features="learned")


def test_package_imports_stay_light():
    import subprocess
    import sys

    code = "import sys, stamo_vla.stamo, stamo_vla.training; print([m for m in ('torch', 'diffusers') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
