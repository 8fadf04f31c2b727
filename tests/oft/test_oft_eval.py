"""An OFT adapter in the LIBERO harness (fake env pool): chunked open-loop execution, wrist image + proprio inputs."""

from __future__ import annotations

import types

import numpy as np
import pytest
from oft_helpers import CHUNK, STATE_SHAPE, RecordingPool, oft_config

from stamo_vla.evaluation import AdapterPolicyConfig, CheckpointPolicyConfig, EvalConfig
from stamo_vla.libero.evaluation import evaluate

WAIT, MAX_STEPS, OPEN_LOOP = 2, 7, 3
CATALOG = types.SimpleNamespace(
    task_count=lambda suite: 2, task_instruction=lambda suite, t: f"put object {t} away"
)


@pytest.fixture(scope="module")
def oft_dirs(tmp_path_factory):
    from stamo_vla.adapter import attach, save_adapter
    from stamo_vla.vla import build_tiny
    from stamo_vla.vla.tiny import tiny_norm_stats

    root = tmp_path_factory.mktemp("oft_eval")
    base, _ = build_tiny(save_dir=root / "base")
    stats = {"libero_spatial": tiny_norm_stats()["tiny_dataset"]}
    stats["libero_spatial"]["proprio"] = {
        "q01": [-1.0] * 8,
        "q99": [1.0] * 8,
        "min": [-2.0] * 8,
        "max": [2.0] * 8,
        "mean": [0.0] * 8,
        "std": [1.0] * 8,
    }
    model = attach(base, oft_config(), target_shape=STATE_SHAPE)
    save_adapter(model, root / "adapter", dataset_statistics=stats)
    return root


@pytest.mark.slow
def test_oft_adapter_runs_chunked_in_the_harness(oft_dirs, tmp_path):
    from stamo_vla.evaluation import build_policy
    from stamo_vla.libero.protocol import center_crop, flip_image, postprocess_action, resize_like_rlds

    cfg = EvalConfig(
        policy=AdapterPolicyConfig(
            checkpoint=str(oft_dirs / "base"), adapter_dir=str(oft_dirs / "adapter"), device="cpu"
        ),
        suites=["libero_spatial"],
        num_trials_per_task=1,
        max_steps=MAX_STEPS,
        num_steps_wait=WAIT,
        open_loop_steps=OPEN_LOOP,
        center_crop=True,
        video="none",
        num_workers=2,
        progress=False,
        output_dir=str(tmp_path / "eval"),
    )
    policy = build_policy(cfg)
    inner = policy.policy
    assert type(inner).__name__ == "OFTPolicy" and policy.action_chunk == CHUNK and policy.uses_wrist_image
    calls, predict = [], inner.predict_batch

    def spy(images, instructions, **obs):
        out = predict(images, instructions, **obs)
        calls.append((images, obs["wrist_images"], obs["proprio"], out))
        return out

    inner.predict_batch = spy
    pool = RecordingPool()
    summary = evaluate(cfg, pool_factory=lambda n: pool, policy=policy, catalog=CATALOG)
    assert summary["overall"]["episodes"] == 2
    # 7 policy steps, 3 executed per call: calls at steps 0, 3, 6 for each of the two episodes (batched together)
    assert len(calls) == 3 and all(len(c[0]) == 2 for c in calls)
    for _, wrist, proprio, chunk in calls:
        assert len(wrist) == 2
        assert chunk.shape == (2, CHUNK, 7)
        assert proprio.shape == (2, 8)
    # the wrist frame is preprocessed exactly like the third-person one (flip, JPEG + resize, center crop)
    first_wrist = calls[0][1][0]
    pool.specs[0], pool.t[0] = types.SimpleNamespace(task_id=0), WAIT
    expected = center_crop(resize_like_rlds(flip_image(pool._obs(0)["robot0_eye_in_hand_image"]), 224))
    np.testing.assert_array_equal(first_wrist, expected)
    # executed actions are the chunk's first 3 actions in order, post-processed for the env
    stepped = [a for task, t, a in sorted(pool.received, key=lambda r: r[:2]) if task == 0 and t >= WAIT]
    assert len(stepped) == MAX_STEPS
    for k, action in enumerate(stepped):
        call, offset = divmod(k, OPEN_LOOP)
        np.testing.assert_allclose(action, postprocess_action(calls[call][3][0, offset]))


def test_proprio_is_normalized_with_the_training_statistics_and_clipped(oft_dirs):
    from stamo_vla.adapter import load_adapter
    from stamo_vla.adapter.oft_policy import OFTPolicy
    from stamo_vla.data.normalization import normalize
    from stamo_vla.vla import OpenVLAForActionPrediction, OpenVLAProcessor

    base = OpenVLAForActionPrediction.from_pretrained(oft_dirs / "base")
    policy = OFTPolicy(
        load_adapter(base, oft_dirs / "adapter"), OpenVLAProcessor.from_pretrained(oft_dirs / "base")
    )
    raw = np.array([[0.5, -3.0, 5.0, 0.0, 0.2, -0.2, 0.04, -0.04]], np.float32)
    out = policy.normalize_proprio(raw)
    np.testing.assert_allclose(out, normalize(raw, base.norm_stats["libero_spatial"]["proprio"]))
    np.testing.assert_allclose(out[0, :3], [0.5, -1.0, 1.0], atol=1e-6)


@pytest.mark.slow
def test_a_merged_oft_checkpoint_evaluates_through_the_oft_policy(oft_dirs, tmp_path):
    from stamo_vla.adapter import load_adapter, merge
    from stamo_vla.evaluation import build_policy
    from stamo_vla.vla import OpenVLAForActionPrediction, OpenVLAProcessor

    processor = OpenVLAProcessor.from_pretrained(oft_dirs / "base")
    adapter = load_adapter(
        OpenVLAForActionPrediction.from_pretrained(oft_dirs / "base"), oft_dirs / "adapter"
    )
    merge(adapter, tmp_path / "merged", processor=processor)
    common = dict(suites=["libero_spatial"], progress=False, output_dir=str(tmp_path / "o"))
    merged = build_policy(
        EvalConfig(policy=CheckpointPolicyConfig(checkpoint=str(tmp_path / "merged"), device="cpu"), **common)
    )
    unmerged = build_policy(
        EvalConfig(
            policy=AdapterPolicyConfig(
                checkpoint=str(oft_dirs / "base"), adapter_dir=str(oft_dirs / "adapter"), device="cpu"
            ),
            **common,
        )
    )
    assert type(merged.policy).__name__ == "OFTPolicy" and merged.action_chunk == CHUNK
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for _ in range(2)]
    obs = dict(wrist_images=images[::-1], proprio=rng.normal(size=(2, 8)).astype(np.float32))
    np.testing.assert_allclose(
        merged.predict_batch(images, ["a", "b"], **obs),
        unmerged.predict_batch(images, ["a", "b"], **obs),
        atol=1e-4,
    )


@pytest.mark.parametrize("record", [True, False, None])
def test_eval_crop_follows_the_checkpoints_record_and_an_explicit_value_wins(oft_dirs, tmp_path, record):
    import json
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(oft_dirs / "adapter", adapter)
    provenance = adapter / "provenance.json"
    provenance.write_text(
        json.dumps({**json.loads(provenance.read_text()), "trained_with_image_aug": record})
    )
    common = dict(
        policy=AdapterPolicyConfig(checkpoint=str(oft_dirs / "base"), adapter_dir=str(adapter)),
        suites=["libero_spatial"],
    )
    merged = dict(
        policy=CheckpointPolicyConfig(checkpoint=str(adapter)), suites=["libero_spatial"]
    )  # a merged checkpoint carries the same record
    for cfg in (common, merged):
        if record is None:  # nothing recorded: unknown, the user says which
            with pytest.raises(ValueError, match="records no trained_with_image_aug.*--center_crop true"):
                EvalConfig(**cfg).resolve_center_crop()
        else:
            assert EvalConfig(**cfg).resolve_center_crop() is record
        for explicit in (True, False):
            assert EvalConfig(center_crop=explicit, **cfg).resolve_center_crop() is explicit
