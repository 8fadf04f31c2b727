"""The StaMo adapter: LoRA (peft) + a future-state head on any causal VLA that returns hidden states."""

from stamo_vla.adapter.attach import attach, load_adapter, merge, save_adapter
from stamo_vla.adapter.configuration_adapter import StaMoAdapterConfig
from stamo_vla.adapter.modeling_adapter import StaMoAdapterModel

__all__ = ["StaMoAdapterConfig", "StaMoAdapterModel", "attach", "load_adapter", "merge", "save_adapter"]
