"""One entry point per operation: attach, save_adapter, load_adapter, merge.

On disk (docs/design.md contract) an adapter directory holds the peft adapter (``adapter_config.json``,
``adapter_model.safetensors``), the head weights (``stamo_head.safetensors``), the variant's extra modules (``oft_modules.safetensors`` for the OFT
variant), the StaMo adapter config
(``stamo_adapter_config.json``), its provenance (``provenance.json``: encoder fingerprint, base-model signature,
image augmentation; `stamo_vla.provenance`) and ``dataset_statistics.json`` (action + proprio statistics).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from stamo_vla.adapter.configuration_adapter import CONFIG_NAME, StaMoAdapterConfig, saved_target_shape
from stamo_vla.adapter.heads import StateHead
from stamo_vla.adapter.lora import lora_config
from stamo_vla.adapter.modeling_adapter import StaMoAdapterModel, base_model_of, hidden_size_of
from stamo_vla.data.statistics import load_dataset_statistics
from stamo_vla.data.target_cache import target_facts
from stamo_vla.fileio import (
    atomic_dir,
    check_finite_safetensors,
    check_finite_tensors,
    check_replaceable,
    safetensors_problem,
    save_weights,
    write_json_atomic,
)
from stamo_vla.provenance import PROVENANCE_NAME, Provenance, read_provenance, write_provenance

HEAD_WEIGHTS = "stamo_head.safetensors"
STATISTICS = "dataset_statistics.json"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
ADAPTER_KIND = "adapter"
# the target shape of a head attached without an encoder or a target_shape: a StaMo state (2 tokens x 1024 dims)
STAMO_STATE_SHAPE = (2, 1024)
MERGED_KIND = "merged_checkpoint"


# weight_digest: how many weight matrices, and how many of each one's elements, it hashes
DIGEST_TENSORS, DIGEST_ELEMENTS = 8, 4096


def weight_digest(model: nn.Module) -> str:
    """A hash of the weights themselves, cheap on a 7B model: `DIGEST_TENSORS` matrices spread evenly over the
    parameter names (embeddings, vision backbone, projector, LLM layers, output), `DIGEST_ELEMENTS` evenly spaced
    elements of each.

    Fine-tunes of one base share its architecture and shapes and differ only in values, and a merged LoRA update
    changes every element of the matrices it targets, so a few sampled matrices tell them apart. Samples are
    hashed as bfloat16, so a checkpoint loaded in bf16 or in fp32 gives the same digest.
    """
    matrices = sorted(  # by name (names are unique)
        (name, p)
        for name, p in model.named_parameters()
        # quantized (packed integer) and offloaded (meta) tensors hold no comparable values
        if "lora_" not in name and p.ndim >= 2 and p.dtype.is_floating_point and p.device.type != "meta"
    )
    if not matrices:
        return ""
    picks = sorted(
        {round(i * (len(matrices) - 1) / max(DIGEST_TENSORS - 1, 1)) for i in range(DIGEST_TENSORS)}
    )
    h = hashlib.sha256()
    with torch.no_grad():
        for i in picks:
            name, p = matrices[i]
            flat = p.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // DIGEST_ELEMENTS)][:DIGEST_ELEMENTS]
            h.update(name.encode())
            h.update(sample.to("cpu", torch.bfloat16).view(torch.int16).numpy().tobytes())
    return h.hexdigest()[:16]


def base_signature(model: nn.Module) -> dict:
    """What an adapter must agree with to be loaded onto `model`: architecture, sizes, parameter shapes and a
    digest of the weights (`weight_digest`: another checkpoint of the same architecture is another base)."""
    shapes = sorted((name, tuple(p.shape)) for name, p in model.named_parameters() if "lora_" not in name)
    digest = hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]
    return {
        "model_type": getattr(model.config, "model_type", type(model).__name__),
        "hidden_size": hidden_size_of(model),
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "shape_digest": digest,
        "weight_digest": weight_digest(model),
    }


def _build_head(
    model: nn.Module, cfg: StaMoAdapterConfig, target_shape: tuple[int, int] | None
) -> StateHead | None:
    if not cfg.has_head:
        return None
    return StateHead(hidden_size_of(model), *target_shape, cfg.head_depth, cfg.head_width)


def target_shape_of(model: nn.Module) -> tuple[int, int] | None:
    """(num_state_tokens, state_dim) of the model's target head; None without one."""
    head = getattr(model, "head", None)
    return None if head is None else (int(head.num_tokens), int(head.token_dim))


def _resolve_target_shape(
    cfg: StaMoAdapterConfig, facts: dict | None, target_shape: tuple[int, int] | None
) -> tuple[int, int] | None:
    """The head's target shape: the encoder's (`facts`), else the one given (a target cache's manifest), else a
    StaMo state's."""
    if not cfg.has_head:
        return None
    if facts is not None:
        found = (int(facts["num_state_tokens"]), int(facts["state_dim"]))
        if target_shape is not None and tuple(target_shape) != found:
            raise ValueError(
                f"target_shape={tuple(target_shape)} disagrees with the target encoder, whose targets are "
                f"{found[0]} x {found[1]}; leave target_shape unset (the encoder fixes it)."
            )
        return found
    shape = tuple(target_shape) if target_shape is not None else STAMO_STATE_SHAPE
    if len(shape) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise ValueError(
            f"target_shape={target_shape!r} is not (num_state_tokens, state_dim) as two positive integers"
        )
    return shape


def init_seed(seed: int, part: str) -> int:
    """The seed of one initialization (`part`: "lora", "target_head", "action_head") derived from the run seed."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{part}".encode()).digest()[:8], "big") % 2**63


@contextlib.contextmanager
def seeded_init(seed: int | None, part: str) -> Iterator[None]:
    """Draw the weights built inside from their own generator, seeded by (`seed`, `part`) alone: the global
    torch RNG is restored afterwards, so whatever was built before (a target encoder) cannot shift them and they
    shift nothing after. ``seed=None`` draws from the global RNG as it stands."""
    if seed is None:
        yield
        return
    import torch

    with torch.random.fork_rng(
        devices=range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []
    ):
        torch.manual_seed(init_seed(seed, part))
        yield


def _describe_trainable(model: StaMoAdapterModel) -> str:
    total = sum(p.numel() for p in model.parameters())
    lora = sum(p.numel() for n, p in model.vla.named_parameters() if p.requires_grad)
    head = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not n.startswith("vla."))
    return (
        f"trainable params: {lora + head:,} (LoRA {lora:,} + heads {head:,}) || all params: {total:,} "
        f"|| trainable%: {100 * (lora + head) / max(total, 1):.4f}"
    )


def attach(
    vla: nn.Module,
    cfg: StaMoAdapterConfig,
    stamo_encoder: nn.Module | None = None,
    stamo_decoder: nn.Module | None = None,
    provenance: Provenance | None = None,
    seed: int | None = None,
    target_shape: tuple[int, int] | None = None,
) -> StaMoAdapterModel:
    """Freeze `vla`, add LoRA through peft and the target head; return the trainable model.

    Args:
        vla: a transformers causal VLA whose forward accepts ``input_ids, attention_mask, pixel_values`` and
            returns logits and (with ``output_hidden_states=True``) hidden states. Quantized models are prepared
            with peft's ``prepare_model_for_kbit_training`` first.
        cfg: adapter config; not modified (the model keeps its own copy, ``model.config``).
        stamo_encoder: the target's frozen per-frame encoder for on-the-fly targets: a StaMo encoder, or one of
            `stamo_vla.adapter.target_encoders` (not needed with a target cache).
        stamo_decoder: frozen StaMo decoder for the optional decoder loss and for decoding predictions.
        provenance: facts to record with the adapter (e.g. ``trained_with_image_aug``); not modified. The model's
            own record (``model.provenance``, saved as provenance.json) adds the base signature and, when
            `stamo_encoder` is given, its fingerprint.
        seed: the run seed. When given, the LoRA weights, the target head and the action head's extra modules
            are each drawn from their own generator derived from it (`seeded_init`), so runs with the same seed
            start from the same weights wherever their shapes agree, whatever target encoder was loaded first.
        target_shape: (num_state_tokens, state_dim) of the head's target when no `stamo_encoder` fixes it (a
            target cache's manifest records it); None = a StaMo state's `STAMO_STATE_SHAPE`. Saved with the
            adapter.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    cfg = dataclasses.replace(cfg)
    record = dataclasses.replace(provenance or Provenance(), base_model=base_signature(vla))
    facts = target_facts(stamo_encoder) if stamo_encoder is not None else None
    shape = _resolve_target_shape(cfg, facts, target_shape)
    if facts is not None:
        record.stamo_fingerprint = facts["encoder_fingerprint"]
    if getattr(vla, "is_loaded_in_4bit", False) or getattr(vla, "is_loaded_in_8bit", False):
        vla = prepare_model_for_kbit_training(vla)
    vla.requires_grad_(False)
    with seeded_init(seed, "lora"):
        peft_model = get_peft_model(vla, lora_config(vla, cfg))
    with seeded_init(seed, "target_head"):
        head = _build_head(vla, cfg, shape)
    if head is not None:
        head.to(next(vla.parameters()).device)
    with seeded_init(seed, "action_head"):
        model = cfg.action_head.build_model(peft_model, vla, cfg, head)
    model.set_stamo(stamo_encoder, stamo_decoder)
    model.provenance = record
    if int(os.environ.get("RANK", "0")) == 0:  # one parameter summary per run, not one per process
        print(_describe_trainable(model))
    return model


def check_finite_adapter(model: StaMoAdapterModel, what: str) -> None:
    """Refuse an adapter whose own tensors (LoRA, head, the action head's modules) hold NaN or inf."""
    tensors = (
        (name, p.detach())
        for name, p in model.named_parameters()
        if p.requires_grad or "lora_" in name or name.startswith("head.")
    )
    check_finite_tensors(
        tensors,
        what,
        "Training diverged before these weights were made; resume from an earlier checkpoint with a lower "
        "--optim.lr (or --optim.max_grad_norm) instead.",
    )


def save_adapter(
    model: StaMoAdapterModel,
    directory: str | Path,
    dataset_statistics: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the adapter directory atomically (a crash never leaves a half-written adapter in place).

    `directory` must be new or empty, or (with `overwrite`) an adapter saved there before; any other
    directory is refused, never replaced.

    Args:
        model: the adapter model (from `attach` or `load_adapter`).
        directory: where to write; new, empty, or an adapter saved there before (with `overwrite`).
        dataset_statistics: the action / proprio statistics to save (default: the base's ``norm_stats``).
        overwrite: replace an adapter saved in `directory` before.
    """
    directory = Path(directory)
    stats = (
        dataset_statistics
        if dataset_statistics is not None
        else getattr(base_model_of(model.vla), "norm_stats", None)
    )
    if not stats:
        raise ValueError(
            "save_adapter needs dataset statistics (action/proprio q01/q99) so the adapter can un-normalize actions; "
            "pass dataset_statistics=... (the training run's dataset_statistics.json)."
        )
    check_finite_adapter(model, f"the adapter to save in {directory}")
    with atomic_dir(directory, kind=ADAPTER_KIND, overwrite=overwrite) as tmp:
        # LoRA on lm_head (upstream's target set) makes peft offer to save whole embedding matrices; the base
        # embeddings are frozen and unchanged, so only the LoRA weights are written
        model.vla.save_pretrained(tmp, save_embedding_layers=False)
        if model.head is not None:
            save_weights(model.head.state_dict(), tmp / HEAD_WEIGHTS)
        model.config.action_head.save_extra(model, tmp)
        model.config.save(tmp, target_shape_of(model))
        write_provenance(tmp, _provenance_of(model))
        write_json_atomic(tmp / STATISTICS, stats)
    return directory


def _provenance_of(model: nn.Module) -> Provenance:
    """The model's record (a model built without `attach` / `load_adapter` records nothing)."""
    return getattr(model, "provenance", None) or Provenance()


def check_base_compatible(base: nn.Module, provenance: Provenance, directory: Path) -> None:
    """Refuse a base other than the one an adapter records; warn when it records nothing (nothing to check).

    Shared by `load_adapter` and the streaming merge (`stamo_vla.adapter.streaming_merge`).

    Args:
        base: the model the adapter is to be loaded onto or merged into (before LoRA).
        provenance: the adapter's record (`read_provenance`); its ``base_model`` signature is compared.
        directory: the adapter directory, named in the messages.

    Raises:
        ValueError: the base's signature differs from the recorded one (names each differing key).
    """
    if not provenance.recorded:
        warnings.warn(
            f"{directory} has no {PROVENANCE_NAME} (nor the facts older adapters kept in their config): the base "
            "model it was trained on is unknown and is not checked. Copy provenance.json from the run that wrote "
            "the adapter (<run_dir>/adapter) to have it checked.",
            stacklevel=3,
        )
    expected = provenance.base_model
    if not expected:
        return
    found = base_signature(base)
    # an older record lacks weight_digest: check what it holds
    diffs = [
        f"{k}: adapter {expected[k]!r} vs base {found[k]!r}"
        for k in found
        if k in expected and expected[k] != found[k]
    ]
    if diffs:
        raise ValueError(
            f"the adapter in {directory} was trained on a different base model ({'; '.join(diffs)}; the "
            f"adapter's record is base_model in {provenance.source}; a weight_digest that differs alone means a "
            "checkpoint of the same architecture with other weights). Load it onto the checkpoint it was trained "
            "from."
        )


def _load_head(model_for_size: nn.Module, cfg: StaMoAdapterConfig, directory: Path) -> StateHead | None:
    if not cfg.has_head:
        return None
    shape = saved_target_shape(directory)
    if shape is None:
        raise ValueError(
            f"{directory / CONFIG_NAME} has target={cfg.target!r} but records no target shape (num_state_tokens, "
            "state_dim); copy the file again from the run that wrote the adapter."
        )
    head = _build_head(model_for_size, cfg, shape)
    path = directory / HEAD_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has target={cfg.target!r} but no {HEAD_WEIGHTS}")
    head.load_weights(load_file(str(path)))
    return head.to(next(model_for_size.parameters()).device)


def _apply_statistics(base: nn.Module, directory: Path) -> None:
    path = directory / STATISTICS
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} has no {STATISTICS}: without it actions cannot be un-normalized. Copy the training run's "
            f"{STATISTICS} into the adapter directory."
        )
    stats = load_dataset_statistics(path)  # names the file when it is invalid or holds NaN/inf
    if hasattr(base, "norm_stats"):
        base.norm_stats = stats


def check_weight_files(directory: Path) -> None:
    """Name a truncated or invalid safetensors file of an adapter directory instead of a bare safetensors error
    (shared by `load_adapter` and the streaming merge).

    Raises:
        ValueError: naming the file, its problem and where to take an intact copy.
    """
    for file in sorted(directory.glob("*.safetensors")):
        problem = safetensors_problem(file)
        if problem is not None:
            raise ValueError(
                f"adapter directory {directory}: {problem}. Copy the adapter again, or take the same files from "
                "a training checkpoint (<run_dir>/checkpoints/step_*/model)."
            )


def has_lora(directory: Path) -> bool:
    """Whether an adapter directory holds peft LoRA weights (a merged checkpoint's head directory holds none).

    Raises:
        FileNotFoundError: LoRA weights without their ``adapter_config.json`` (they would be dropped).
    """
    if (directory / PEFT_CONFIG).is_file():
        return True
    if weights := [name for name in PEFT_WEIGHTS if (directory / name).is_file()]:
        raise FileNotFoundError(
            f"adapter directory {directory} holds LoRA weights ({weights[0]}) but no {PEFT_CONFIG}, so they "
            f"cannot be loaded (and would otherwise be dropped). Copy {PEFT_CONFIG} from the run that wrote "
            "them (<run_dir>/adapter or its checkpoints/step_*/model), or save the adapter again."
        )
    return False


def load_adapter(base: nn.Module, directory: str | Path, is_trainable: bool = False) -> StaMoAdapterModel:
    """Load an adapter saved by `save_adapter` (or the head of a merged directory) onto `base`.

    Args:
        base: the base VLA the adapter was trained on (its signature is checked when recorded).
        directory: an adapter directory, or a merged checkpoint (its head and config only).
        is_trainable: load LoRA and head with gradients on (to resume training).
    """
    from peft import PeftModel

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"adapter directory {directory} does not exist")
    cfg = StaMoAdapterConfig.load(directory)
    provenance = read_provenance(directory)
    check_weight_files(directory)
    own = [
        f for f in sorted(directory.glob("*.safetensors")) if not f.name.startswith("model")
    ]  # not merged shards
    check_finite_safetensors(
        own, "These weights come from a diverged run: use an earlier checkpoint's adapter."
    )
    _apply_statistics(base, directory)
    if has_lora(directory):
        check_base_compatible(base, provenance, directory)
        vla = PeftModel.from_pretrained(base, str(directory), is_trainable=is_trainable)
    else:  # a merged checkpoint: the LoRA weights are already inside `base`
        vla = base
    head = _load_head(base, cfg, directory)
    if head is not None:
        head.requires_grad_(is_trainable)
    model = cfg.action_head.build_model(vla, base, cfg, head)
    cfg.action_head.load_extra(model, directory, is_trainable)
    model.provenance = provenance
    return model


def merge(
    model: StaMoAdapterModel,
    out_dir: str | Path,
    processor=None,
    overwrite: bool = False,
    max_shard_size: str | int = "5GB",
) -> Path:
    """Merge LoRA into the loaded base weights and write the upstream checkpoint layout plus the head.

    `out_dir` must be new or empty, or (with `overwrite`) an earlier merge output holding only what was
    written there; anything else is refused.

    This consumes `model` (peft merges in place) and needs the whole model in memory; a base on disk merges
    with far less memory through `stamo-vla merge` (`stamo_vla.adapter.streaming_merge`), which writes the
    same tensors. Run it once, offline, on one process: never on every rank (openvla-oft #28, #151). The
    result loads with the policy loader; `load_adapter(merged, out_dir)` restores the head on top of it.

    Args:
        model: the adapter model (from `attach` or `load_adapter`).
        out_dir: output directory.
        processor: written beside the weights when given.
        overwrite: replace an earlier merge output.
        max_shard_size: the most tensor data per weight shard (upstream's "5GB").
    """
    out_dir = Path(out_dir)
    check_replaceable(out_dir, MERGED_KIND, overwrite)  # before merging: the merge consumes `model`
    check_finite_adapter(model, f"the adapter to merge into {out_dir}")
    merged = model.vla.merge_and_unload() if hasattr(model.vla, "merge_and_unload") else model.vla
    stats = getattr(merged, "norm_stats", None)
    with atomic_dir(out_dir, kind=MERGED_KIND, overwrite=overwrite) as tmp:
        merged.save_pretrained(tmp, max_shard_size=max_shard_size)
        if processor is not None:
            processor.save_pretrained(tmp)
        if model.head is not None:
            save_weights(model.head.state_dict(), tmp / HEAD_WEIGHTS)
        model.config.action_head.save_extra(model, tmp)
        model.config.save(tmp, target_shape_of(model))
        # the merged weights are no longer the base the LoRA weights were trained on: no base signature to check
        write_provenance(tmp, dataclasses.replace(_provenance_of(model), base_model={}))
        if stats:
            write_json_atomic(tmp / STATISTICS, stats)
    return out_dir


def frozen_state_digest(model: nn.Module) -> str:
    """sha256 over all non-LoRA, non-head parameters (to prove the base stays bit-identical)."""
    h = hashlib.sha256()
    for name, p in sorted(base_model_of(model).named_parameters(), key=lambda x: x[0]):
        if "lora_" in name:
            continue
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
