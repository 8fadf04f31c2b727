"""Dependent fields are derived in one resolve step; a conflicting value the user set is an error, not overwritten."""

from __future__ import annotations

import pytest

from stamo_vla.adapter.action_heads import L1ActionHead
from stamo_vla.adapter.configuration_adapter import StaMoAdapterConfig
from stamo_vla.configs import parse_config
from stamo_vla.training.finetune_config import FinetuneConfig


def test_data_fields_follow_the_adapter():
    cfg = parse_config(FinetuneConfig, ["--stamo_path", "/x", "--adapter.horizon", "4"])
    assert cfg.data.horizon == 4
    oft = parse_config(
        FinetuneConfig,
        ["--stamo_path", "/x", "--adapter.action_head.type", "l1", "--adapter.action_head.action_chunk", "8"]
        + ["--adapter.action_head.num_images", "2", "--adapter.action_head.use_proprio", "true"],
    )
    assert (oft.data.action_chunk, oft.data.load_wrist, oft.data.load_proprio) == (8, True, True)
    assert oft.adapter.action_head == L1ActionHead(action_chunk=8, num_images=2, use_proprio=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data.horizon", "4"], r"data.horizon=4 conflicts with adapter.horizon=1"),
        (
            ["--adapter.horizon", "2", "--data.horizon", "4"],
            r"data.horizon=4 conflicts with adapter.horizon=2",
        ),
        (
            ["--data.action_chunk", "8"],
            r"data.action_chunk=8 conflicts with adapter.action_head.action_chunk=1",
        ),
    ],
)
def test_a_conflicting_user_value_names_both_fields(args, message):
    with pytest.raises(ValueError, match=message):
        parse_config(FinetuneConfig, ["--stamo_path", "/x", *args])


def test_attach_leaves_the_callers_config_alone():
    from stamo_vla.adapter import attach
    from stamo_vla.adapter.attach import target_shape_of
    from stamo_vla.stamo import StaMoEncoder, tiny_config
    from stamo_vla.vla import build_tiny

    cfg = StaMoAdapterConfig(target="state", head_width=16, lora_rank=4)
    before = cfg.to_dict()
    encoder = StaMoEncoder(tiny_config())
    model = attach(build_tiny(seed=0)[0], cfg, stamo_encoder=encoder)
    assert cfg.to_dict() == before
    assert target_shape_of(model) == (encoder.config.num_state_tokens, encoder.config.state_dim)
    assert model.provenance.base_model and model.provenance.stamo_fingerprint
