"""`stamo-vla merge` streams the base shard by shard: the same tensors as the in-memory merge, sharded, umask-following."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from stamo_vla import fileio
from stamo_vla.adapter import StaMoAdapterConfig, attach, load_adapter, merge, save_adapter
from stamo_vla.adapter.merge_cli import MergeConfig
from stamo_vla.adapter.streaming_merge import merge_checkpoint, read_lora, shard_bytes

SHARD = 100_000  # bytes: the tiny model (about 1.2 MB in fp32) then spans many shards


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny fp32 base, its bf16 copy, and an adapter with LoRA on every linear, the patch convs and lm_head."""
    from stamo_vla.vla import OpenVLAForActionPrediction, build_tiny
    from stamo_vla.vla.loading import save_checkpoint

    root = tmp_path_factory.mktemp("streaming_merge")
    base, processor = build_tiny(save_dir=root / "base32", seed=0)
    # lora_target_modules defaults to upstream's set: every linear, lm_head and the patch-embedding convs
    cfg = StaMoAdapterConfig(target="state", head_width=16, lora_rank=4)
    model = attach(base, cfg, target_shape=(2, 16))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    save_adapter(model, root / "adapter")
    base16 = OpenVLAForActionPrediction.from_pretrained(root / "base32", dtype=torch.bfloat16)
    save_checkpoint(base16, processor, root / "base16")
    return root


def _tensors(directory) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(directory.glob("model*.safetensors")):
        out.update(load_file(str(file)))
    return out


def _in_memory_merge(root, base: str, dtype: str | None, out):
    """What `stamo-vla merge` did before it streamed: load base + adapter, peft's merge, save_pretrained."""
    from stamo_vla.vla import OpenVLAForActionPrediction, OpenVLAProcessor

    kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
    model = load_adapter(OpenVLAForActionPrediction.from_pretrained(root / base, **kwargs), root / "adapter")
    return merge(model, out, processor=OpenVLAProcessor.from_pretrained(root / base))


@pytest.mark.parametrize(
    ("base", "dtype", "umask"),
    [("base16", None, 0o022), ("base32", "bfloat16", 0o077), ("base32", None, 0o022)],
)
def test_streaming_merge_equals_the_in_memory_merge_sharded_and_following_the_umask(
    saved, tmp_path, base, dtype, umask
):
    from stamo_vla.vla import OpenVLAForActionPrediction

    reference = _in_memory_merge(saved, base, dtype, tmp_path / "reference")
    old = os.umask(umask)
    try:
        out = merge_checkpoint(
            saved / base, saved / "adapter", tmp_path / "merged", dtype, max_shard_size=SHARD
        )
    finally:
        os.umask(old)
    ref, new = _tensors(reference), _tensors(out)
    assert sorted(ref) == sorted(new)
    for key in ref:  # bit-identical, same dtype: the delta is added in the arithmetic peft uses
        assert new[key].dtype == ref[key].dtype and torch.equal(new[key], ref[key]), key
    # every other file the in-memory merge writes, with the same content
    weights = {p.name for p in out.glob("model*")}
    assert {p.name for p in out.iterdir()} - weights == {p.name for p in reference.iterdir()} - {
        "model.safetensors"
    }
    for name in ("config.json", "dataset_statistics.json", "provenance.json", "stamo_adapter_config.json"):
        assert json.loads((out / name).read_text()) == json.loads((reference / name).read_text()), name
    assert (out / "stamo_head.safetensors").read_bytes() == (
        reference / "stamo_head.safetensors"
    ).read_bytes()
    # sharded as transformers and upstream: model-0000i-of-0000n + an index naming every tensor
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards == sorted(p.name for p in out.glob("model-*-of-*.safetensors"))
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert sorted(index["weight_map"]) == sorted(ref)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in ref.values())
    for shard in shards:
        held = [t for k, t in new.items() if index["weight_map"][k] == shard]
        assert len(held) == 1 or sum(t.numel() * t.element_size() for t in held) <= SHARD
        with safe_open(str(out / shard), framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
    expected = 0o666 & ~umask
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == dict.fromkeys(
        (p.name for p in out.iterdir()), expected
    )
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    merged = OpenVLAForActionPrediction.from_pretrained(out)  # the policy loader reads the sharded layout
    assert torch.equal(
        merged.state_dict()["language_model.lm_head.weight"], ref["language_model.lm_head.weight"]
    )
    assert load_adapter(merged, out).head is not None


def test_a_broken_adapter_is_named_and_nothing_is_written(saved, tmp_path):
    broken = tmp_path / "adapter"
    broken.mkdir()
    for file in (saved / "adapter").iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    state = load_file(str(broken / "adapter_model.safetensors"))
    key = next(k for k in sorted(state) if k.endswith("q_proj.lora_B.weight"))
    state[key][0, 0] = float("nan")
    fileio.save_weights(state, broken / "adapter_model.safetensors")
    with pytest.raises(ValueError, match=r"q_proj\.weight gives NaN or inf"):
        merge_checkpoint(saved / "base32", broken, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    config = json.loads((broken / "adapter_config.json").read_text())
    (broken / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora=True.*Merge in memory"):
        read_lora(broken)


def test_shards_are_planned_in_order_streamed_and_a_large_tensor_gets_its_own(tmp_path):
    tensors = {
        "a": torch.zeros(10),
        "b": torch.randn(6, 5).to(torch.bfloat16),
        "c": torch.tensor([True, False]),
        "d": torch.arange(4),
        "e": torch.randn(3, 2, 2),
    }
    specs = {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()}
    assert fileio.plan_shards({"a": 40, "b": 60, "c": 2, "d": 32, "e": 48}, 64) == [
        ["a"],
        ["b", "c"],
        ["d"],
        ["e"],
    ]
    calls = []

    def produce(keys):
        calls.append(keys)
        yield from ((k, tensors[k]) for k in keys)

    files = fileio.save_sharded_weights(tmp_path, specs, produce, 64, metadata={"format": "pt"})
    assert calls == [["a"], ["b", "c"], ["d"], ["e"]]
    assert [f.name for f in files] == [f"model-0000{i}-of-00004.safetensors" for i in (1, 2, 3, 4)]
    index = json.loads((tmp_path / fileio.WEIGHTS_INDEX).read_text())
    assert index["metadata"] == {"total_size": 182}
    assert index["weight_map"] == {
        "a": files[0].name,
        "b": files[1].name,
        "c": files[1].name,
        "d": files[2].name,
        "e": files[3].name,
    }
    read = _tensors(tmp_path)  # safetensors reads what was streamed: same names, dtypes and values
    assert sorted(read) == sorted(tensors) and all(
        read[k].dtype == v.dtype and torch.equal(read[k], v) for k, v in tensors.items()
    )
    assert all(fileio.safetensors_problem(f) is None for f in files)
    one = fileio.save_sharded_weights(tmp_path / "one", specs, produce, 10**6)
    assert [f.name for f in one] == [fileio.WEIGHTS_FILE] and not (
        tmp_path / "one" / fileio.WEIGHTS_INDEX
    ).exists()
    with pytest.raises(ValueError, match="does not match the header"):
        fileio.save_sharded_weights(tmp_path / "bad", specs, lambda keys: iter([("a", torch.ones(3))]), 10**6)
    assert not (tmp_path / "bad" / fileio.WEIGHTS_FILE).exists()


@pytest.mark.parametrize("size", ["5XB", "-1GB", "0", "lots"])
def test_a_shard_size_that_does_not_parse_is_named(size):
    with pytest.raises(ValueError, match=f"max_shard_size={size!r}"):
        MergeConfig(vla_path="b", adapter_dir="a", output_dir="o", max_shard_size=size)
    assert shard_bytes("5GB") == 5 * 10**9 and shard_bytes("2000") == 2000 and shard_bytes("1GiB") == 2**30


def test_an_adapter_of_another_base_is_refused_before_anything_is_written(saved, tmp_path):
    from stamo_vla.vla import build_tiny

    build_tiny(save_dir=tmp_path / "other", seed=1)  # same architecture, other weights
    with pytest.raises(ValueError, match="trained on a different base model.*weight_digest"):
        merge_checkpoint(tmp_path / "other", saved / "adapter", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
