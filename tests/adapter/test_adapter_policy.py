"""FutureFramePolicy: same actions as the plain policy, plus decoded predicted future frames for the videos."""

import numpy as np
import pytest
import torch

from stamo_vla.adapter import StaMoAdapterConfig, attach
from stamo_vla.adapter.policy import FutureFramePolicy


def test_future_frames_accompany_unchanged_actions():
    from stamo_vla.stamo import StaMoAutoencoder, tiny_config
    from stamo_vla.vla import OpenVLAPolicy, build_tiny

    torch.manual_seed(0)
    stamo = StaMoAutoencoder(tiny_config()).eval()
    base, processor = build_tiny()
    adapter = attach(
        base,
        StaMoAdapterConfig(target="state", head_width=16, lora_rank=4),
        stamo_encoder=stamo.encoder,
        stamo_decoder=stamo.decoder,
    ).eval()
    policy = FutureFramePolicy(adapter, processor, sample_steps=2)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for _ in range(2)]
    instructions = ["pick up the bowl", "open the drawer"]
    actions = policy.predict_batch(images, instructions)
    plain = OpenVLAPolicy(adapter.vla, processor).predict_batch(images, instructions)
    np.testing.assert_array_equal(actions, plain)
    frames = policy.future_frames()
    assert len(frames) == 2 and all(f.shape == (224, 224, 3) and f.dtype == np.uint8 for f in frames)


def test_needs_a_head_and_a_decoder():
    from stamo_vla.vla import build_tiny

    base, processor = build_tiny()
    adapter = attach(base, StaMoAdapterConfig(target="none", lora_rank=4))
    with pytest.raises(ValueError, match="StaMo head and a StaMo decoder"):
        FutureFramePolicy(adapter, processor)


def test_eval_config_refuses_future_video_without_an_adapter():
    from stamo_vla.evaluation import AdapterPolicyConfig, EvalConfig

    with pytest.raises(ValueError, match="needs --policy.adapter_dir"):
        AdapterPolicyConfig(checkpoint="base", future_video_stamo="/some/stamo")
    policy = AdapterPolicyConfig(checkpoint="base", adapter_dir="adapter", future_video_stamo="/some/stamo")
    with pytest.raises(ValueError, match="policy.future_video_stamo='/some/stamo' .* got video='none'"):
        EvalConfig(policy=policy, video="none")
