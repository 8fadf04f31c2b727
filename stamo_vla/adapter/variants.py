"""Registry of adapter variants by `StaMoAdapterConfig.action_head`: how each is built, saved and loaded.

"tokens" is the plain `StaMoAdapterModel` (nothing beyond LoRA + head). "l1" is `StaMoOFTAdapterModel`, whose
extra trainable modules (L1 action head, proprio projector, FiLM) live in ``oft_modules.safetensors`` beside the
StaMo head in the adapter (and merged) directory.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from stamo_vla.adapter.configuration_adapter import StaMoAdapterConfig
from stamo_vla.adapter.heads import StateHead
from stamo_vla.adapter.modeling_adapter import StaMoAdapterModel

OFT_WEIGHTS = "oft_modules.safetensors"


def _build_tokens(vla: nn.Module, base: nn.Module, cfg: StaMoAdapterConfig, head) -> StaMoAdapterModel:
    return StaMoAdapterModel(vla, cfg, head)


def _build_oft(vla: nn.Module, base: nn.Module, cfg: StaMoAdapterConfig, head) -> StaMoAdapterModel:
    from stamo_vla.adapter.oft_adapter import StaMoOFTAdapterModel
    from stamo_vla.vla.oft_forward import OFTModules

    if getattr(base, "vision_backbone", None) is None:
        raise ValueError(
            f"action_head='l1' needs an OpenVLA base (vision_backbone + projector + Llama); got {type(base).__name__}"
        )
    attn = getattr(base.config.text_config, "_attn_implementation", None)
    if attn == "flash_attention_2":
        raise ValueError(
            "action_head='l1' needs a 4-D attention mask, which flash_attention_2 does not take; "
            "load the base with attn_implementation='sdpa' or 'eager'."
        )
    oft = OFTModules(
        base,
        action_chunk=cfg.action_chunk,
        action_dim=cfg.action_dim,
        num_images=cfg.num_images,
        proprio_dim=cfg.proprio_dim if cfg.use_proprio else None,
        use_film=cfg.use_film,
        head_width=cfg.action_head_width,
    )
    oft.to(next(base.parameters()).device)
    return StaMoOFTAdapterModel(vla, cfg, head, oft)


VARIANTS = {"tokens": _build_tokens, "l1": _build_oft}


def build_adapter_model(
    vla: nn.Module, base: nn.Module, cfg: StaMoAdapterConfig, head: StateHead | None
) -> StaMoAdapterModel:
    """The adapter model class registered for ``cfg.action_head``, with freshly initialized extra modules."""
    return VARIANTS[cfg.action_head](vla, base, cfg, head)


def save_extra_modules(model: StaMoAdapterModel, directory: Path) -> None:
    """Write the variant's extra trainable modules (nothing for "tokens")."""
    oft = getattr(model, "oft", None)
    if oft is None:
        return
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in oft.state_dict().items()}
    save_file(state, str(Path(directory) / OFT_WEIGHTS))


def load_extra_modules(model: StaMoAdapterModel, directory: Path, is_trainable: bool) -> None:
    """Load what `save_extra_modules` wrote into `model`'s freshly built extra modules."""
    oft = getattr(model, "oft", None)
    if oft is None:
        return
    path = Path(directory) / OFT_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} has action_head={model.config.action_head!r} but no {OFT_WEIGHTS} (the L1 action head, "
            "proprio projector and FiLM weights); it was not written by save_adapter/merge of an OFT adapter."
        )
    from safetensors.torch import load_file

    device = next(oft.parameters()).device
    oft.load_state_dict({k: v.to(device) for k, v in load_file(str(path)).items()})
    oft.requires_grad_(is_trainable)
