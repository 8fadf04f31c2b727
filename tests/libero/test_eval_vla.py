"""The tiny random-init VLA through the evaluation harness (fake env pool): loading, batching, statistics keys."""

import json
import shutil

import numpy as np
import pytest

from stamo_vla.evaluation import AdapterPolicyConfig, CheckpointPolicyConfig, EvalConfig, build_policy
from stamo_vla.libero.evaluation import evaluate
from stamo_vla.libero.results import ResultsStore
from stamo_vla.policy import Policy

pytest.importorskip("timm")

from test_eval_harness import CATALOG, FakePool  # noqa: E402  (tests/libero is on sys.path under pytest)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from stamo_vla.vla.tiny import build_tiny

    path = tmp_path_factory.mktemp("tiny_vla")
    build_tiny(save_dir=path)
    stats = json.loads((path / "dataset_statistics.json").read_text())
    # name the statistics like the released LIBERO fine-tunes: the suite key is absent, <suite>_no_noops exists
    (path / "dataset_statistics.json").write_text(
        json.dumps({"libero_spatial_no_noops": stats["tiny_dataset"]})
    )
    return path


class CountingPolicy(Policy):
    def __init__(self, inner):
        self.inner, self.batch_sizes = inner, []
        self.action_chunk = inner.action_chunk

    def predict_batch(self, images, instructions, **obs):
        self.batch_sizes.append(len(images))
        return self.inner.predict_batch(images, instructions, **obs)


def test_tiny_vla_runs_batched_and_writes_results(tiny_checkpoint, tmp_path):
    cfg = EvalConfig(
        policy=CheckpointPolicyConfig(checkpoint=str(tiny_checkpoint)),
        suites=["libero_spatial"],
        task_ids=[0],
        num_trials_per_task=2,
        max_steps=3,
        num_steps_wait=1,
        num_workers=2,
        video="none",
        progress=False,
        output_dir=str(tmp_path / "out"),
    )
    policy = CountingPolicy(build_policy(cfg))
    assert policy.inner.policy.unnorm_key == "libero_spatial_no_noops"  # upstream's fallback
    pool = FakePool(2)
    summary = evaluate(cfg, pool_factory=lambda n: pool, policy=policy, catalog=CATALOG)
    # one policy call per step on the batch of both live episodes
    assert policy.batch_sizes == [2, 2, 2]
    assert summary["overall"]["episodes"] == 2
    assert all(r.steps == 3 for r in ResultsStore(cfg.output_dir).load())
    # actions reaching the env: gripper binarized and flipped to {-1, +1}, arm within the statistics' range
    acted = np.stack([a for _, t, a in pool.received if t >= 1])
    assert set(np.unique(acted[:, 6])) <= {-1.0, 1.0}
    assert np.all(np.abs(acted[:, :6]) <= 2.0)


def test_statistics_without_the_suite_key_list_available_keys(tiny_checkpoint, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    stats = json.loads((ckpt / "dataset_statistics.json").read_text())
    (ckpt / "dataset_statistics.json").write_text(
        json.dumps({"bridge_orig": stats["libero_spatial_no_noops"]})
    )
    cfg = EvalConfig(
        policy=CheckpointPolicyConfig(checkpoint=str(ckpt)),
        suites=["libero_spatial"],
        output_dir=str(tmp_path / "o"),
    )
    with pytest.raises(
        ValueError,
        match=r"\['libero_spatial', 'libero_spatial_no_noops'\].*Available keys: \['bridge_orig'\]",
    ):
        build_policy(cfg)
    # an explicit key works; a multi-suite run checks every suite's key up front
    assert (
        build_policy(
            EvalConfig(policy=CheckpointPolicyConfig(checkpoint=str(ckpt), unnorm_key="bridge_orig"))
        ).policy.unnorm_key
        == "bridge_orig"
    )
    with pytest.raises(ValueError, match="libero_object"):
        build_policy(
            EvalConfig(
                policy=CheckpointPolicyConfig(checkpoint=str(tiny_checkpoint)),
                suites=["libero_spatial", "libero_object"],
            )
        )


@pytest.mark.slow
def test_adapter_dir_is_loaded_on_the_base(tiny_checkpoint, tmp_path):
    import torch

    from stamo_vla.adapter import StaMoAdapterConfig, attach, save_adapter
    from stamo_vla.vla.modeling_openvla import OpenVLAForActionPrediction
    from stamo_vla.vla.policy import OpenVLAPolicy
    from stamo_vla.vla.processing_openvla import OpenVLAProcessor

    base = OpenVLAForActionPrediction.from_pretrained(tiny_checkpoint)
    stats = dict(base.norm_stats)
    adapted = attach(base, StaMoAdapterConfig(target="none", lora_rank=4))
    with torch.no_grad():  # LoRA B starts at zero; make the adapter change the actions
        for name, p in adapted.vla.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    # the adapter carries its own statistics, under the suite's own name
    adapter_stats = {"libero_spatial": stats["libero_spatial_no_noops"]}
    save_adapter(adapted, tmp_path / "adapter", dataset_statistics=adapter_stats)
    base.norm_stats = adapter_stats

    images = [np.random.default_rng(i).integers(0, 256, (224, 224, 3), dtype=np.uint8) for i in range(2)]
    texts = ["put the bowl on the plate", "open the drawer"]
    cfg = EvalConfig(
        policy=AdapterPolicyConfig(checkpoint=str(tiny_checkpoint), adapter_dir=str(tmp_path / "adapter")),
        output_dir=str(tmp_path),
    )
    with_adapter = build_policy(cfg)
    assert with_adapter.policy.unnorm_key == "libero_spatial"
    expected = OpenVLAPolicy(adapted.vla, OpenVLAProcessor.from_pretrained(tiny_checkpoint), "libero_spatial")
    np.testing.assert_allclose(
        with_adapter.predict_batch(images, texts), expected.predict_batch(images, texts)
    )
    plain = build_policy(
        EvalConfig(policy=CheckpointPolicyConfig(checkpoint=str(tiny_checkpoint)), output_dir=str(tmp_path))
    )
    assert not np.allclose(plain.predict_batch(images, texts), with_adapter.predict_batch(images, texts))


@pytest.mark.slow
def test_a_merged_token_checkpoint_acts_through_its_action_head(tiny_checkpoint, tmp_path):
    import torch

    from stamo_vla.adapter import StaMoAdapterConfig, attach, load_adapter, merge, save_adapter
    from stamo_vla.vla.modeling_openvla import OpenVLAForActionPrediction
    from stamo_vla.vla.policy import OpenVLAPolicy
    from stamo_vla.vla.processing_openvla import OpenVLAProcessor

    adapted = attach(
        OpenVLAForActionPrediction.from_pretrained(tiny_checkpoint),
        StaMoAdapterConfig(target="none", lora_rank=4),
    )
    with torch.no_grad():
        for name, p in adapted.vla.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    save_adapter(adapted, tmp_path / "adapter")
    loaded = load_adapter(OpenVLAForActionPrediction.from_pretrained(tiny_checkpoint), tmp_path / "adapter")
    merge(loaded, tmp_path / "merged", processor=OpenVLAProcessor.from_pretrained(tiny_checkpoint))
    common = dict(suites=["libero_spatial"], output_dir=str(tmp_path / "o"))
    merged = build_policy(
        EvalConfig(policy=CheckpointPolicyConfig(checkpoint=str(tmp_path / "merged")), **common)
    )
    adapter = AdapterPolicyConfig(checkpoint=str(tiny_checkpoint), adapter_dir=str(tmp_path / "adapter"))
    unmerged = build_policy(EvalConfig(policy=adapter, **common))
    assert type(merged.policy) is type(unmerged.policy) is OpenVLAPolicy  # the token head's policy
    images = [np.random.default_rng(i).integers(0, 256, (224, 224, 3), dtype=np.uint8) for i in range(2)]
    texts = ["put the bowl on the plate", "open the drawer"]
    np.testing.assert_allclose(
        merged.predict_batch(images, texts), unmerged.predict_batch(images, texts), atol=1e-5
    )


@pytest.mark.slow
def test_4bit_quantized_policy_loads_and_acts(tiny_checkpoint, tmp_path):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    cfg = EvalConfig(
        policy=CheckpointPolicyConfig(checkpoint=str(tiny_checkpoint), quantization="4bit", device="cpu"),
        output_dir=str(tmp_path),
    )
    policy = build_policy(cfg)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in policy.policy.model.modules())
    images = [np.zeros((224, 224, 3), dtype=np.uint8)] * 2
    actions = policy.predict_batch(images, ["open the drawer", "turn on the stove"])
    assert actions.shape == (2, 1, 7) and np.isfinite(actions).all()


def test_multi_suite_run_switches_statistics_per_suite(tiny_checkpoint, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    stats = json.loads((ckpt / "dataset_statistics.json").read_text())["libero_spatial_no_noops"]
    wide = json.loads(json.dumps(stats))
    wide["action"]["q99"] = [10 * v for v in wide["action"]["q99"]]
    (ckpt / "dataset_statistics.json").write_text(
        json.dumps({"libero_spatial": stats, "libero_object_no_noops": wide})
    )
    cfg = EvalConfig(
        policy=CheckpointPolicyConfig(checkpoint=str(ckpt)),
        suites=["libero_spatial", "libero_object"],
        task_ids=[0],
        num_trials_per_task=1,
        max_steps=2,
        num_steps_wait=0,
        video="none",
        progress=False,
        output_dir=str(tmp_path / "out"),
    )
    policy = build_policy(cfg)
    seen = []
    inner = policy.policy.predict_batch

    def spy(images, instructions, **obs):
        seen.append(policy.policy.unnorm_key)
        return inner(images, instructions, **obs)

    policy.policy.predict_batch = spy
    summary = evaluate(cfg, pool_factory=lambda n: FakePool(n), policy=policy, catalog=CATALOG)
    # suites run in order, each un-normalized with its own statistics (object: the _no_noops fallback)
    assert [k for i, k in enumerate(seen) if i == 0 or seen[i - 1] != k] == [
        "libero_spatial",
        "libero_object_no_noops",
    ]
    assert sorted(summary["suites"]) == ["libero_object", "libero_spatial"]
