"""LoRA via peft: which modules get adapters, and the LoraConfig that mirrors upstream OpenVLA."""

from __future__ import annotations

from torch import nn

from stamo_vla.adapter.configuration_adapter import StaMoAdapterConfig


def _output_layer_name(model: nn.Module) -> str | None:
    get = getattr(model, "get_output_embeddings", None)
    out = get() if callable(get) else None
    if out is None:
        return None
    return next((name for name, module in model.named_modules() if module is out), None)


def resolve_lora_targets(model: nn.Module, spec: str | list[str]) -> list[str]:
    """Full module names that get LoRA.

    Args:
        model: the base VLA (before peft wrapping).
        spec: "openvla-upstream" (every nn.Linear including the output layer, plus Conv2d modules named
            ``*.proj``: what upstream's ``"all-linear"`` wrapped under peft 0.11, reference openvla.md §1.3),
            "all-linear" (every nn.Linear except the output layer: peft's current meaning), or a list of
            module-name suffixes.

    Raises:
        ValueError: when a requested suffix matches nothing; the message lists the linear layer names present.
    """
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if spec == "openvla-upstream":
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n.endswith(".proj")]
        return sorted(linear + convs)
    if spec == "all-linear":
        out = _output_layer_name(model)
        return sorted(n for n in linear if n != out)
    names = [n for n, _ in model.named_modules()]
    chosen, missing = [], []
    for suffix in spec:
        hits = [n for n in names if n == suffix or n.endswith("." + suffix)]
        (chosen.extend(hits) if hits else missing.append(suffix))
    if missing:
        leaf = sorted({n.rsplit(".", 1)[-1] for n in linear})
        raise ValueError(
            f"lora_target_modules {missing} match no module of {type(model).__name__}. "
            f"Linear layer names present: {leaf}"
        )
    return sorted(set(chosen))


def lora_config(model: nn.Module, cfg: StaMoAdapterConfig):
    """The peft LoraConfig for `model` under `cfg` (upstream defaults: r=32, alpha=min(r,16), dropout 0, gaussian)."""
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.effective_lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=resolve_lora_targets(model, cfg.lora_target_modules),
        init_lora_weights="gaussian" if cfg.lora_init == "gaussian" else True,
    )
