"""A tiny OFT adapter (two cameras + proprio, K-action chunks) in the real LIBERO simulator, briefly."""

from __future__ import annotations

import pytest
from oft_helpers import CHUNK, STATE_SHAPE, oft_config

from stamo_vla.evaluation import AdapterPolicyConfig, EvalConfig
from stamo_vla.libero.evaluation import evaluate
from stamo_vla.libero.results import ResultsStore

pytestmark = [pytest.mark.sim, pytest.mark.slow]
pytest.importorskip("libero")

MAX_STEPS = 6


def test_tiny_oft_adapter_short_sim_run(tmp_path):
    from stamo_vla.adapter import attach, save_adapter
    from stamo_vla.vla import build_tiny
    from stamo_vla.vla.tiny import TINY_DATASET

    base, _ = build_tiny(save_dir=tmp_path / "base")
    save_adapter(attach(base, oft_config(), target_shape=STATE_SHAPE), tmp_path / "adapter")
    cfg = EvalConfig(
        policy=AdapterPolicyConfig(
            checkpoint=str(tmp_path / "base"),
            adapter_dir=str(tmp_path / "adapter"),
            unnorm_key=TINY_DATASET,
            device="cpu",
        ),
        suites=["libero_spatial"],
        task_ids=[0],
        num_trials_per_task=1,
        max_steps=MAX_STEPS,
        num_steps_wait=2,
        open_loop_steps=CHUNK,
        num_workers=1,
        video="none",
        # an adapter saved without training records no image augmentation: the crop is chosen here
        center_crop=False,
        progress=False,
        output_dir=str(tmp_path / "eval"),
    )
    from stamo_vla.evaluation import build_policy

    policy = build_policy(cfg)
    seen, predict = [], policy.policy.predict_batch

    def spy(images, instructions, **obs):
        seen.append({k: obs[k] for k in ("wrist_images", "proprio")})
        return predict(images, instructions, **obs)

    policy.policy.predict_batch = spy
    summary = evaluate(cfg, policy=policy)
    records = ResultsStore(tmp_path / "eval").load()
    assert summary["overall"]["episodes"] == 1 and len(records) == 1
    assert records[0].error is None and records[0].steps == MAX_STEPS
    # 6 policy steps with chunks of 4 executed open-loop: two policy calls, each with a real wrist frame
    assert len(seen) == 2
    for obs in seen:
        wrist = obs["wrist_images"][0]
        assert wrist.shape == (224, 224, 3) and wrist.std() > 0
        assert obs["proprio"].shape == (1, 8)
