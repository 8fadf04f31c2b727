"""Checkpoint directories in the upstream layout: checks with clear errors, attention and quantization setup.

Upstream layout (reference §1.7): `config.json` (model_type "openvla"), `model.safetensors` or
`model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`, `preprocessor_config.json`, tokenizer
files, `generation_config.json`, and optionally `dataset_statistics.json` (overrides `norm_stats`).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from stamo_vla import fileio
from stamo_vla.configs import check_choice
from stamo_vla.data.statistics import load_dataset_statistics as load_checked
from stamo_vla.fileio import atomic_dir, safetensors_problem, write_json_atomic
from stamo_vla.optional import is_available, require

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
DATASET_STATISTICS = "dataset_statistics.json"
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded as an OpenVLA model."""


HUB_PREFIX = "hf://"


def looks_like_hub_id(text: str) -> bool:
    """``org/name`` whose ``org`` is not a local directory (``runs/merged`` with a local ``runs/`` is a path)."""
    if text.count("/") != 1 or text.startswith((".", "/", "~")) or "\\" in text:
        return False
    return not Path(text.split("/")[0]).expanduser().exists()


def resolve_directory(path: str | os.PathLike) -> Path:
    """Local directory of a checkpoint; a Hub id is fetched with huggingface_hub.

    A path is resolved locally and fails when missing if it looks local: it starts with ``.``, ``/`` or
    ``~``, has more or fewer than one slash, or its first component exists here (``runs/merged`` when
    ``runs/`` exists), so a mistyped local path never downloads someone else's weights. ``hf://org/name``
    always means the Hub.
    """
    text = str(path)
    explicit = text.startswith(HUB_PREFIX)
    if explicit:
        text = text[len(HUB_PREFIX) :]
    local = Path(text).expanduser()
    if not explicit and local.is_dir():
        return local
    if explicit or looks_like_hub_id(text):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(text))
        except Exception as err:  # offline, unknown repo, no permission: report as a missing directory
            raise FileNotFoundError(
                f"OpenVLA checkpoint: '{text}' is not a local directory and could not be fetched from the "
                f"Hub ({type(err).__name__}). Pass the path of a downloaded checkpoint directory."
            ) from err
    raise FileNotFoundError(
        f"OpenVLA checkpoint: directory '{local}' does not exist (it is read as a local path; for a Hugging "
        f"Face Hub repo write {HUB_PREFIX}<org>/<name>)."
    )


def read_json(file: Path) -> Any:
    """Parse a checkpoint's JSON file; an invalid one is named with the fix."""
    return fileio.read_json(
        file,
        "Copy it again from the checkpoint it came from.",
        name=f"OpenVLA checkpoint: {file}",
        error=CheckpointError,
    )


def read_config_json(directory: Path) -> dict:
    file = directory / CONFIG_FILE
    if not file.is_file():
        raise CheckpointError(
            f"OpenVLA checkpoint: {directory} has no {CONFIG_FILE}; found {sorted(p.name for p in directory.iterdir())}."
        )
    data = read_json(file)
    if data.get("model_type") != "openvla":
        raise CheckpointError(
            f"OpenVLA checkpoint: {file} has model_type={data.get('model_type')!r}; expected 'openvla' "
            f"(an openvla/openvla-7b style checkpoint)."
        )
    return data


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint (sharded via the index json, or one file)."""
    index = directory / SAFETENSORS_INDEX
    if index.is_file():
        shards = sorted(set(read_json(index)["weight_map"].values()))
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise CheckpointError(
                f"OpenVLA checkpoint: {index.name} lists shards missing from {directory}: {missing}."
            )
        return [directory / s for s in shards]
    if (directory / SAFETENSORS_FILE).is_file():
        return [directory / SAFETENSORS_FILE]
    raise CheckpointError(
        f"OpenVLA checkpoint: no weights in {directory}; expected {SAFETENSORS_FILE} or {SAFETENSORS_INDEX} "
        f"with its shards. Found {sorted(p.name for p in directory.iterdir())}."
    )


def checkpoint_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, read from the safetensors headers (no tensor data is loaded)."""
    from safetensors import safe_open

    shapes = {}
    for file in files:
        problem = safetensors_problem(file)
        if problem is not None:
            raise CheckpointError(
                f"OpenVLA checkpoint: {problem}. Download or copy that file again (compare its size with the "
                "source's)."
            )
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def expected_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """State-dict shapes of a model built from `config` on the meta device (no memory, fast)."""
    from stamo_vla.vla.modeling_openvla import OpenVLAForActionPrediction

    with torch.device("meta"):
        model = OpenVLAForActionPrediction(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_state_dict(expected: dict, found: dict, where: str) -> None:
    """Raise `CheckpointError` naming missing/unexpected keys and shape mismatches (first few of each).

    Args:
        expected: the model's state dict (or its shapes).
        found: the checkpoint's.
        where: the checkpoint named in the error.
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [
        f"{k}: checkpoint {found[k]} vs config {expected[k]}"
        for k in sorted(set(expected) & set(found))
        if tuple(found[k]) != tuple(expected[k])
    ]
    problems = []
    if mismatched:
        problems.append(
            f"{len(mismatched)} shape mismatch(es) between config.json and weights: {mismatched[:5]}"
        )
    if missing:
        problems.append(f"{len(missing)} missing key(s): {missing[:5]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {unexpected[:5]}")
    if problems:
        raise CheckpointError(f"OpenVLA checkpoint {where}: " + "; ".join(problems) + ".")


def load_dataset_statistics(directory: Path) -> dict | None:
    file = directory / DATASET_STATISTICS
    return load_checked(file) if file.is_file() else None


def resolve_attn_implementation(requested: str | None, device_map: Any = None) -> str:
    """`sdpa` by default; `flash_attention_2` only with flash_attn importable and CUDA, else warn + sdpa."""
    requested = requested or "sdpa"
    if requested not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation: got {requested!r}; allowed {list(ATTN_IMPLEMENTATIONS)}.")
    if requested == "flash_attention_2":
        on_cpu = device_map in ("cpu", {"": "cpu"}) or not torch.cuda.is_available()
        if on_cpu or not is_available("flash_attn"):
            reason = "CUDA is not available" if on_cpu else "flash_attn is not installed (extra 'flash')"
            warnings.warn(f"flash_attention_2 requested but {reason}; using sdpa instead.", stacklevel=3)
            return "sdpa"
    return requested


def quantization_kwargs(
    quantization_config: Any = None,
    load_in_4bit: bool = False,
    load_in_8bit: bool = False,
    device_map: Any = None,
) -> dict:
    """from_pretrained kwargs for bitsandbytes loading; placement goes through device_map (never `.to()`).

    Args:
        quantization_config: a transformers quantization config (None: from the flags).
        load_in_4bit: load 4-bit (bitsandbytes).
        load_in_8bit: load 8-bit (bitsandbytes).
        device_map: where the quantized weights are placed.
    """
    if load_in_4bit and load_in_8bit:
        raise ValueError("load_in_4bit and load_in_8bit are exclusive; pass one of them.")
    if quantization_config is None and not (load_in_4bit or load_in_8bit):
        return {}

    require("bitsandbytes", "4-bit / 8-bit loading")
    from transformers import BitsAndBytesConfig

    cuda = torch.cuda.is_available()
    if quantization_config is None:
        # upstream eval semantics: bnb defaults (FP4 for 4-bit); compute in fp32 on CPU, bf16 on CUDA
        compute = torch.bfloat16 if cuda else torch.float32
        quantization_config = BitsAndBytesConfig(
            load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit, bnb_4bit_compute_dtype=compute
        )
    if device_map is None:
        device_map = {"": 0} if cuda else {"": "cpu"}
    return {"quantization_config": quantization_config, "device_map": device_map}


def qlora_quantization_config() -> Any:
    """Upstream finetune.py's QLoRA quantization: 4-bit NF4 weights with bf16 compute (needs bitsandbytes).

    Differs from plain ``load_in_4bit=True`` (eval semantics: bnb's default FP4) on purpose: training with
    ``FinetuneConfig.load_in_4bit`` quantizes exactly as upstream's ``use_quantization`` does.
    """
    require("bitsandbytes", "4-bit QLoRA training")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )


QUANTIZATION = ("none", "4bit", "8bit", "qlora")


def load_vla(
    model_cls: Any,
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    quantization: str = "none",
    attn_implementation: str = "sdpa",
) -> Any:
    """Load a VLA (`model_cls.from_pretrained`) with a dtype, a quantization and a device: the one way to do it.

    Args:
        model_cls: `OpenVLAForActionPrediction` or `OpenVLAOFTForActionPrediction`.
        path: checkpoint directory.
        device: where the weights go; None leaves them where they load (CPU).
        dtype: weight dtype (a torch dtype or its name); None keeps the checkpoint's.
        quantization: none | 4bit | 8bit (bitsandbytes defaults, evaluation semantics) | qlora (upstream
            fine-tuning's NF4 with bf16 compute). Quantized weights are placed at load time through device_map:
            `.to()` is refused for them (openvla #145, #287).
        attn_implementation: sdpa | eager | flash_attention_2 (falls back to sdpa with a warning).
    """
    check_choice("quantization", quantization, QUANTIZATION)
    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation}
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if quantization == "qlora":
        kwargs["quantization_config"] = qlora_quantization_config()
    elif quantization != "none":
        kwargs.update(load_in_4bit=quantization == "4bit", load_in_8bit=quantization == "8bit")
    if quantization != "none":
        if device is not None:
            kwargs["device_map"] = {"": str(device)}
        return model_cls.from_pretrained(path, **kwargs)
    model = model_cls.from_pretrained(path, **kwargs)
    return model.to(device) if device is not None else model


def prepare_load(path: str | os.PathLike, kwargs: dict) -> tuple[Path, dict, dict | None]:
    """Validate a checkpoint directory and normalize from_pretrained kwargs.

    Returns:
        (directory, kwargs for `PreTrainedModel.from_pretrained`, dataset statistics or None).
    """
    from stamo_vla.vla.configuration_openvla import OpenVLAConfig

    directory = resolve_directory(path)
    config_json = read_config_json(directory)
    files = weight_files(directory)
    config = kwargs.get("config")
    if not isinstance(config, OpenVLAConfig):
        config = OpenVLAConfig.from_dict(config_json)
    check_state_dict(expected_shapes(config), checkpoint_shapes(files), str(directory))
    kwargs = dict(kwargs)
    quant = quantization_kwargs(
        kwargs.pop("quantization_config", None),
        kwargs.pop("load_in_4bit", False),
        kwargs.pop("load_in_8bit", False),
        kwargs.get("device_map"),
    )
    kwargs.update(quant)
    kwargs["attn_implementation"] = resolve_attn_implementation(
        kwargs.get("attn_implementation"), kwargs.get("device_map")
    )
    if "torch_dtype" in kwargs:
        kwargs["dtype"] = kwargs.pop("torch_dtype")
    if quant and "dtype" not in kwargs:
        kwargs["dtype"] = quant["quantization_config"].bnb_4bit_compute_dtype
    return directory, kwargs, load_dataset_statistics(directory)


def save_checkpoint(
    model: Any,
    processor: Any,
    save_dir: str | os.PathLike,
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
) -> Path:
    """Write model + processor in the upstream layout, atomically (a crash leaves the old directory).

    Adds `generation_config.json` and `dataset_statistics.json` (from `model.norm_stats`) like upstream.
    `save_dir` must be new or empty, or (with `overwrite`) a checkpoint written here before: any other
    directory is refused, never replaced (`stamo_vla.fileio.atomic_dir`).

    Args:
        model: the OpenVLA model.
        processor: its processor.
        save_dir: the checkpoint directory.
        max_shard_size: the largest weights file.
        overwrite: replace a checkpoint this function wrote there before.
    """
    save_dir = Path(save_dir)
    with atomic_dir(save_dir, kind="openvla_checkpoint", overwrite=overwrite) as tmp:
        model.save_pretrained(str(tmp), max_shard_size=max_shard_size)
        if processor is not None:
            processor.save_pretrained(tmp)
        text = model.config.text_config
        write_json_atomic(
            tmp / "generation_config.json",
            {
                "bos_token_id": text.bos_token_id,
                "eos_token_id": text.eos_token_id,
                "pad_token_id": model.config.pad_token_id,
            },
        )
        if model.config.norm_stats:
            write_json_atomic(tmp / DATASET_STATISTICS, model.config.norm_stats)
    return save_dir


def disable_unsupported_bnb_cpu_packing(model: torch.nn.Module) -> int:
    """Keep bitsandbytes' AVX512-BF16 CPU kernel away from layers it cannot pack; returns how many.

    bitsandbytes 0.50 repacks 4-bit weights for that kernel on the first CPU forward and assumes
    `out_features % 32 == 0` and `in_features % blocksize == 0`; other layers (e.g. SigLIP's 4304-wide MLP
    in openvla-7b, or tiny test widths) crash with a reshape error. Those layers use the generic path.
    """
    count = 0
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is None or not getattr(module, "support_avx512bf16_for_cpu", False):
            continue
        out_features, in_features = state.shape[0], state.shape[1]
        if out_features % 32 or in_features % state.blocksize or in_features % 2:
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count
