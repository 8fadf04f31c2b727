"""The StaMo state model: frozen DINOv2 + compressor -> N x D state tokens, SD3-style DiT decoder.

Names are resolved lazily, so ``import stamo_vla.stamo`` imports neither torch nor diffusers; diffusers
is imported only when a decoder is built.

Public API:
    StaMoConfig, tiny_config, mid_config, paper_config   configuration_stamo
    StaMoEncoder, fingerprint                        modeling_encoder
    StaMoDecoder                                     modeling_decoder (imports diffusers when built)
    StaMoAutoencoder                                 modeling_autoencoder
    motion, interpolate, transfer                    motion (module ``stamo_vla.stamo.motion``)
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "StaMoConfig": "configuration_stamo",
    "tiny_config": "configuration_stamo",
    "paper_config": "configuration_stamo",
    "mid_config": "configuration_stamo",
    "StaMoEncoder": "modeling_encoder",
    "fingerprint": "modeling_encoder",
    "StaMoDecoder": "modeling_decoder",
    "StaMoAutoencoder": "modeling_autoencoder",
    "interpolate": "motion",
    "transfer": "motion",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
