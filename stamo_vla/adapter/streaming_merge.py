"""Merge a saved LoRA adapter into a base checkpoint on disk, one output shard in memory at a time.

The in-memory merge (`stamo_vla.adapter.attach.merge`) writes each LoRA delta into the loaded weights: with a
memory-mapped 7B base every page becomes a private copy, so it peaks near the model's size (16.6 GiB for
openvla-7b). Here each base tensor is read from its safetensors shard, the delta of the LoRA pair that targets it
is added in the arithmetic peft's ``merge_and_unload`` uses (so the tensors are bit-identical), and the result is
streamed into transformers' sharded layout; the peak is about the adapter plus one tensor (and its delta).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from stamo_vla.fileio import (
    atomic_dir,
    check_apart,
    check_replaceable,
    save_sharded_weights,
    write_json_atomic,
)

PEFT_PREFIX = "base_model.model."
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
# LoraConfig fields whose non-default value changes the merge arithmetic beyond W + scaling * B A
_UNSUPPORTED = {
    "use_dora": False,
    "lora_bias": False,
    "rank_pattern": {},
    "alpha_pattern": {},
    "modules_to_save": None,
}


@dataclasses.dataclass
class LoraPair:
    """The LoRA factors that target one base weight and peft's scale for them."""

    lora_a: torch.Tensor
    lora_b: torch.Tensor
    scaling: float
    fan_in_fan_out: bool


def read_lora(adapter_dir: Path, weights_file: str = "adapter_model.safetensors") -> dict[str, LoraPair]:
    """Base weight name -> its LoRA pair, from a peft adapter directory.

    Raises:
        ValueError: the adapter uses a LoRA feature this merge does not reproduce (DoRA, LoRA bias, per-module
            ranks, modules to save), or a lora_A weight has no lora_B.
    """
    from peft import LoraConfig

    config = LoraConfig.from_pretrained(str(adapter_dir))
    for field, plain in _UNSUPPORTED.items():
        if getattr(config, field, plain) not in (plain, None, {}, False):
            raise ValueError(
                f"{adapter_dir}/adapter_config.json has {field}={getattr(config, field)!r}, which the streaming "
                "merge does not reproduce. Merge in memory instead: "
                "stamo_vla.adapter.merge(load_adapter(base, adapter_dir), out_dir)."
            )
    scaling = config.lora_alpha / (math.sqrt(config.r) if config.use_rslora else config.r)
    state = load_file(str(adapter_dir / weights_file))
    pairs = {}
    for key, lora_a in state.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removeprefix(PEFT_PREFIX).removesuffix(".lora_A.weight")
        b_key = key.replace(".lora_A.weight", ".lora_B.weight")
        if b_key not in state:
            raise ValueError(f"{adapter_dir}/{weights_file}: {key} has no {b_key}; save the adapter again.")
        pairs[f"{module}.weight"] = LoraPair(lora_a, state[b_key], scaling, bool(config.fan_in_fan_out))
    return pairs


def lora_delta(pair: LoraPair, weight_shape: torch.Size, device: str | torch.device = "cpu") -> torch.Tensor:
    """``scaling * B @ A`` shaped like the weight, as peft's ``get_delta_weight`` computes it.

    peft loads adapter factors in float32 (``autocast_adapter_dtype``), so the delta is float32 and is added to a
    bf16 / fp16 weight in place (rounded once, to the weight's dtype), exactly as ``merge_and_unload`` does.

    Args:
        pair: the LoRA factors of one weight, with their scaling.
        weight_shape: the shape of the weight the delta is added to.
        device: where the product is computed.
    """
    lora_a, lora_b = pair.lora_a.to(device), pair.lora_b.to(device)
    if lora_a.dtype in (torch.float16, torch.bfloat16):
        lora_a, lora_b = lora_a.float(), lora_b.float()
    if lora_a.dim() == 2:
        delta = lora_b @ lora_a
        # scaled in place: one fp32 copy of the delta at a time, not two (the same products as peft's `* scaling`)
        return (delta.T if pair.fan_in_fan_out else delta).mul_(pair.scaling)
    if tuple(weight_shape[2:4]) == (1, 1):  # 1x1 convolution
        return (lora_b.squeeze(3).squeeze(2) @ lora_a.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(
            3
        ) * pair.scaling
    conv = {3: torch.nn.functional.conv1d, 4: torch.nn.functional.conv2d, 5: torch.nn.functional.conv3d}
    return conv[lora_a.dim()](lora_a.transpose(0, 1), lora_b).transpose(0, 1) * pair.scaling


@dataclasses.dataclass
class BaseTensors:
    """Where each tensor of a safetensors checkpoint lives, read from the headers only."""

    files: dict[str, Path]  # tensor name -> shard file
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]

    @classmethod
    def scan(cls, files: list[Path]) -> BaseTensors:
        found = cls({}, {}, {})
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    part = f.get_slice(key)
                    found.files[key] = file
                    found.shapes[key] = tuple(part.get_shape())
                    found.dtypes[key] = SAFETENSORS_DTYPES[part.get_dtype()]
        return found

    def read(self, keys: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """The tensors, each copied out of its shard; a shard is mapped only while one tensor is read."""
        for key in keys:
            with safe_open(str(self.files[key]), framework="pt") as f:
                tensor = f.get_tensor(key)
            yield key, tensor


def merged_dtype(stored: torch.dtype, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype a tensor has after ``from_pretrained(dtype=...)``: floating tensors take `dtype`."""
    return dtype if dtype is not None and stored.is_floating_point else stored


def merge_tensors(
    base: BaseTensors,
    pairs: dict[str, LoraPair],
    keys: list[str],
    dtype: torch.dtype | None = None,
    device: str = "cpu",
) -> Iterator[tuple[str, torch.Tensor]]:
    """The merged tensors `keys`, one at a time: base weight in its merged dtype plus its LoRA delta.

    Args:
        base: the base checkpoint's tensors, read lazily.
        pairs: LoRA factors by base weight name.
        keys: the base tensors to produce, in order.
        dtype: the dtype of the merged tensors (None = each base tensor's own).
        device: where each delta is computed and added.

    Raises:
        ValueError: a merged weight holds NaN or inf (the adapter is broken), naming the tensor.
    """
    for key, tensor in base.read(keys):
        tensor = tensor.to(merged_dtype(tensor.dtype, dtype))
        pair = pairs.get(key)
        if pair is not None:
            tensor = tensor.to(device)
            tensor += lora_delta(pair, tensor.shape, device)
            if not torch.isfinite(tensor).all():
                raise ValueError(
                    f"merging the adapter into {key} gives NaN or inf: the adapter's LoRA weights for it are "
                    "broken. Take the adapter from an earlier checkpoint (<run_dir>/checkpoints/step_*/model)."
                )
        yield key, tensor


def shard_bytes(max_shard_size: str | int) -> int:
    """`max_shard_size` ("5GB", "500MB", "100KB" or bytes) in bytes, as transformers reads it."""
    from transformers.utils.hub import convert_file_size_to_int

    try:
        text = str(max_shard_size).strip()
        size = int(text) if text.lstrip("-").isdigit() else convert_file_size_to_int(text)
    except ValueError as err:
        raise ValueError(
            f"max_shard_size={max_shard_size!r} is not a size; give bytes or a string such as '5GB' or '500MB'."
        ) from err
    if size <= 0:
        raise ValueError(f"max_shard_size={max_shard_size!r} must be positive, e.g. '5GB'.")
    return size


def write_merged_weights(
    directory: Path,
    base_files: list[Path],
    pairs: dict[str, LoraPair],
    dtype: torch.dtype | None,
    device: str,
    max_shard_bytes: int,
) -> list[Path]:
    """Write base + LoRA into `directory` as shards of at most `max_shard_bytes`; returns the shard files.

    Args:
        directory: output folder (an `atomic_dir` temporary).
        base_files: the base checkpoint's safetensors files.
        pairs: `read_lora` of the adapter.
        dtype: cast floating tensors to this dtype (None: as stored).
        device: where the deltas are computed and added.
        max_shard_bytes: most bytes of tensor data per output shard.
    """
    base = BaseTensors.scan(base_files)
    missing = sorted(set(pairs) - set(base.files))
    if missing:
        raise ValueError(
            f"the adapter has LoRA weights for {missing[:5]} (and {max(len(missing) - 5, 0)} more), which the "
            f"base checkpoint {base_files[0].parent} does not hold: it was trained on another base model."
        )
    specs = {key: (merged_dtype(base.dtypes[key], dtype), shape) for key, shape in base.shapes.items()}
    return save_sharded_weights(
        directory,
        specs,
        lambda keys: merge_tensors(base, pairs, keys, dtype, device),
        max_shard_bytes,
        metadata={"format": "pt"},
    )


def copy_head_files(adapter_dir: Path, directory: Path, skip: tuple[str, ...]) -> list[str]:
    """Copy the adapter's weight files other than the LoRA ones (StaMo head, OFT modules); returns their names.

    Args:
        adapter_dir: the adapter directory.
        directory: where the files are copied to.
        skip: file names not to copy (the LoRA weights).
    """
    copied = []
    for file in sorted(adapter_dir.glob("*.safetensors")):
        if file.name not in skip:
            shutil.copyfile(file, directory / file.name)
            copied.append(file.name)
    return copied


def merge_checkpoint(
    base_dir: str | Path,
    adapter_dir: str | Path,
    out_dir: str | Path,
    dtype: str | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    max_shard_size: str | int = "5GB",
) -> Path:
    """Merge the adapter in `adapter_dir` into the checkpoint `base_dir`, writing `out_dir` shard by shard.

    Refused before anything is read: an `out_dir` that overlaps `base_dir` or `adapter_dir`, and an existing
    `out_dir` that is not an earlier merge output (or is one, without `overwrite`, or holds files the merge did
    not write). `out_dir` holds what `stamo_vla.adapter.attach.merge` writes (config, weights, processor files,
    dataset_statistics.json, the StaMo head and adapter config, provenance.json), with weights in shards of at
    most `max_shard_size` (upstream's 5 GB by default) and an index when there are several.

    Args:
        base_dir: the base checkpoint (upstream layout) the adapter was trained on.
        adapter_dir: written by `save_adapter`.
        out_dir: new or empty, or (with `overwrite`) an earlier merge output holding only what we wrote.
        dtype: float32 | bfloat16 | float16 for the merged weights (None: as stored).
        device: where the LoRA deltas are computed.
        overwrite: replace an earlier merge output.
        max_shard_size: the most tensor data per shard file ("5GB", "500MB" or bytes).
    """
    from stamo_vla.adapter.attach import MERGED_KIND

    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    check_apart({"output_dir": out_dir}, {"vla_path": base_dir, "adapter_dir": adapter_dir})
    check_replaceable(out_dir, MERGED_KIND, overwrite)
    max_shard_bytes = shard_bytes(max_shard_size)
    torch_dtype = getattr(torch, dtype) if dtype else None
    inputs = _read_inputs(base_dir, adapter_dir)
    with atomic_dir(out_dir, kind=MERGED_KIND, overwrite=overwrite) as tmp:
        write_merged_weights(tmp, inputs.weight_files, inputs.pairs, torch_dtype, device, max_shard_bytes)
        _write_merged_files(tmp, adapter_dir, inputs, torch_dtype)
    return out_dir


@dataclasses.dataclass
class _MergeInputs:
    """What a merge reads from the base and the adapter, checked before anything is written."""

    weight_files: list[Path]  # the base's weight files
    pairs: dict  # the LoRA factor pairs (empty: the adapter has no LoRA weights, the base is copied)
    cfg: object  # the adapter's StaMoAdapterConfig
    provenance: object  # the adapter's provenance
    stats: dict  # the adapter's dataset statistics
    config: object  # the base's OpenVLAConfig
    processor: object  # the base's OpenVLAProcessor


def _read_inputs(base_dir: Path, adapter_dir: Path) -> _MergeInputs:
    """Read and check the base checkpoint and the adapter (the base stays memory-mapped)."""
    from stamo_vla.adapter.attach import STATISTICS, check_base_compatible, check_weight_files, has_lora
    from stamo_vla.adapter.configuration_adapter import StaMoAdapterConfig
    from stamo_vla.data.statistics import load_dataset_statistics
    from stamo_vla.provenance import read_provenance
    from stamo_vla.vla import OpenVLAForActionPrediction, OpenVLAProcessor
    from stamo_vla.vla.configuration_openvla import OpenVLAConfig
    from stamo_vla.vla.loading import prepare_load, weight_files

    directory, _, _ = prepare_load(base_dir, {})  # checks config, weights and every tensor's shape
    if not adapter_dir.is_dir():
        raise FileNotFoundError(f"adapter directory {adapter_dir} does not exist")
    cfg = StaMoAdapterConfig.load(adapter_dir)
    provenance = read_provenance(adapter_dir)
    check_weight_files(adapter_dir)
    stats = load_dataset_statistics(adapter_dir / STATISTICS)
    config = OpenVLAConfig.from_pretrained(str(directory))
    lora = has_lora(adapter_dir)  # without LoRA weights (a merged checkpoint's head), the base is copied
    if lora:
        # the base-model check reads shapes and a few sampled weights: the model stays memory-mapped
        base = OpenVLAForActionPrediction.from_pretrained(directory)
        check_base_compatible(base, provenance, adapter_dir)
        del base
    pairs = read_lora(adapter_dir) if lora else {}
    processor = OpenVLAProcessor.from_pretrained(directory)
    return _MergeInputs(weight_files(directory), pairs, cfg, provenance, stats, config, processor)


def _write_merged_files(tmp: Path, adapter_dir: Path, inputs: _MergeInputs, torch_dtype) -> None:
    """Everything of a merge output but the weights: config, processor, head files, adapter config, provenance."""
    from stamo_vla.adapter.attach import HEAD_WEIGHTS, PEFT_WEIGHTS, STATISTICS
    from stamo_vla.adapter.configuration_adapter import saved_target_shape
    from stamo_vla.provenance import write_provenance

    config, cfg = inputs.config, inputs.cfg
    config.norm_stats = inputs.stats
    if torch_dtype is not None:
        config.dtype = torch_dtype
    if config.dtype is not None:  # from_pretrained records the dtype it loaded in both configs
        config.text_config.dtype = config.dtype
    config.save_pretrained(str(tmp))
    inputs.processor.save_pretrained(tmp)
    copy_head_files(adapter_dir, tmp, skip=PEFT_WEIGHTS)
    if cfg.has_head and not (tmp / HEAD_WEIGHTS).is_file():
        raise FileNotFoundError(f"{adapter_dir} has target={cfg.target!r} but no {HEAD_WEIGHTS}")
    cfg.save(tmp, saved_target_shape(adapter_dir) if cfg.has_head else None)
    # the merged weights are no longer the base the LoRA weights were trained on: no base signature to check
    write_provenance(tmp, dataclasses.replace(inputs.provenance, base_model={}))
    write_json_atomic(tmp / STATISTICS, inputs.stats)
