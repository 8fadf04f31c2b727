"""Adapter configs saved before the action head was a registered config choice still load, and compute the same."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stamo_vla.adapter import StaMoAdapterConfig, attach, load_adapter, save_adapter
from stamo_vla.adapter.action_heads import L1ActionHead, TokenActionHead
from stamo_vla.adapter.configuration_adapter import CONFIG_NAME

# the flat action-head fields every adapter config held before (values of a tokens adapter)
OLD_TOKENS = {
    "action_head": "tokens",
    "action_chunk": 1,
    "action_dim": 7,
    "action_head_width": None,
    "num_images": 1,
    "use_proprio": False,
    "proprio_dim": 8,
    "use_film": False,
    "stamo_path": "runs/stamo",  # a field that was never read
}


def _old_format(config: StaMoAdapterConfig, **flat) -> dict:
    data = config.to_dict()
    data.pop("action_head")
    return {**data, **OLD_TOKENS, **flat}


def test_old_flat_configs_map_onto_the_action_head_choice():
    tokens = StaMoAdapterConfig.from_dict(_old_format(StaMoAdapterConfig(target="none")))
    assert tokens == StaMoAdapterConfig(target="none") and isinstance(tokens.action_head, TokenActionHead)
    old = _old_format(
        StaMoAdapterConfig(target="none"),
        action_head="l1",
        action_chunk=8,
        action_head_width=32,
        num_images=2,
        use_proprio=True,
        use_film=True,
    )
    l1 = StaMoAdapterConfig.from_dict(old).action_head
    assert l1 == L1ActionHead(action_chunk=8, width=32, num_images=2, use_proprio=True, use_film=True)


def test_the_saved_form_round_trips():
    config = StaMoAdapterConfig(target="none", action_head=L1ActionHead(action_chunk=4, num_images=2))
    saved = json.loads(json.dumps(config.to_dict()))
    assert saved["action_head"]["type"] == "l1"
    assert StaMoAdapterConfig.from_dict(saved) == config


@pytest.mark.slow
def test_an_adapter_directory_with_an_old_config_loads_and_predicts_the_same(tmp_path):
    from stamo_vla.vla import build_tiny
    from stamo_vla.vla.processing_openvla import build_prompt

    base, processor = build_tiny(seed=0)
    model = attach(base, StaMoAdapterConfig(target="state", head_width=16, lora_rank=4), target_shape=(2, 8))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    save_adapter(model, tmp_path / "adapter", dataset_statistics=base.norm_stats)
    path = tmp_path / "adapter" / CONFIG_NAME
    saved = json.loads(
        path.read_text()
    )  # old configs held the target shape among their fields, as it is saved
    shape = {"num_state_tokens": saved["num_state_tokens"], "state_dim": saved["state_dim"]}
    path.write_text(json.dumps(_old_format(StaMoAdapterConfig.from_dict(saved), **shape)))

    loaded = load_adapter(build_tiny(seed=0)[0], tmp_path / "adapter").eval()
    assert loaded.config == model.config
    image = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    enc = processor([build_prompt("pick up the bowl")], [image])
    args = (enc["pixel_values"], enc["input_ids"], enc["attention_mask"])
    expected, expected_state = model.eval().predict_action(*args, return_future_state=True)
    actions, state = loaded.predict_action(*args, return_future_state=True)
    np.testing.assert_array_equal(actions, expected)
    torch.testing.assert_close(state, expected_state)
