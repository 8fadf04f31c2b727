"""What the auxiliary head predicts: a registered choice, ``--adapter.target state | motion | features | untrained |
none``.

    state      the StaMo state of frame t+h, s(t+h) (the product)
    motion     the StaMo motion s(t+h) - s(t) (the paper's best OpenVLA row)
    features   the frozen policy vision backbone's features of frame t+h, average-pooled per tower to a small
               fixed grid (the paper's "DINOv2 Feature" control, dense but kept cheap: see `FeatureTargetEncoder`)
    untrained  the StaMo encoder architecture with seeded random compressor weights, state of frame t+h
               ("is any compact target enough?")
    none       no head: the plain LoRA baseline

Every target is ``combine(f(t), f(t+h))`` of one frozen per-frame encoder ``f``: that encoder is what the target
cache stores per frame (its ``frames`` kind is recorded in the cache manifest), and what computes targets on the
fly without a cache. Every target is standardized the same way (per-dimension mean and std over the training data,
`stamo_vla.adapter.heads.StateHead`). Encoders are built in `stamo_vla.adapter.target_encoders` (torch imported
there, not here).

To add a target: `register_target` a `TargetSpec`; when it needs a new kind of frames, give
`stamo_vla.adapter.target_encoders.build_target_encoder` an encoder with ``encode`` and ``target_manifest``. The
cache, the standardization, saving and loading follow without further changes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TargetSpec:
    """One auxiliary target.

    Attributes:
        name: the ``adapter.target`` value.
        frames: kind of the per-frame encoder whose outputs the target is made of ("stamo", "untrained_stamo",
            "backbone_features"), None for no target.
        difference: the target is ``f(t+h) - f(t)`` (else ``f(t+h)``).
        needs_stamo: computing it needs a trained StaMo checkpoint (``stamo_path``).
        in_state_space: predictions live in the trained StaMo state space (the DiT decoder can decode them).
    """

    name: str
    frames: str | None
    difference: bool = False
    needs_stamo: bool = False
    in_state_space: bool = False

    @property
    def has_head(self) -> bool:
        return self.frames is not None


_REGISTRY: dict[str, TargetSpec] = {}


def register_target(spec: TargetSpec) -> TargetSpec:
    """Add a target choice (its name becomes a valid ``adapter.target``)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"target {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


register_target(TargetSpec("state", "stamo", needs_stamo=True, in_state_space=True))
register_target(TargetSpec("motion", "stamo", difference=True, needs_stamo=True, in_state_space=True))
register_target(TargetSpec("features", "backbone_features"))
register_target(TargetSpec("untrained", "untrained_stamo", needs_stamo=True))
register_target(TargetSpec("none", None))


def target_names() -> tuple[str, ...]:
    """Every registered ``adapter.target`` value."""
    return tuple(_REGISTRY)


def get_target(name: str) -> TargetSpec:
    """The registered target `name`; a ValueError listing the choices otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"target={name!r} is not valid; allowed: {list(_REGISTRY)}")
    return _REGISTRY[name]
