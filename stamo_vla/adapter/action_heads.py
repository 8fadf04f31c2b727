"""How the adapter produces actions: a registered config choice, ``--adapter.action_head.type tokens | l1``.

    tokens   OpenVLA: 7 autoregressive action tokens with cross-entropy, one step per call.
    l1       OpenVLA-OFT: K x 7 empty action positions decoded in one bidirectional pass and an MLP-ResNet L1
             regression head; optionally a wrist camera, a proprio token and FiLM. Its extra trainable modules
             live in ``oft_modules.safetensors`` beside the StaMo head in the adapter (and merged) directory.

Each choice owns what differs between the variants: the adapter model it builds, the batch transform of its
training data, its evaluation policy, the extra weights it saves and loads, and what the data must load (action
chunk, wrist camera, proprio). Model code is imported inside the methods (configs stay light).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import draccus

from stamo_vla.configs import check_choice, check_positive_int

if TYPE_CHECKING:
    from torch import nn

    from stamo_vla.adapter.configuration_adapter import StaMoAdapterConfig
    from stamo_vla.adapter.modeling_adapter import StaMoAdapterModel

OFT_WEIGHTS = "oft_modules.safetensors"


class ActionHeadConfig(draccus.ChoiceRegistry):
    """How the adapter produces actions (set ``action_head.type``)."""

    # Defaults of the one-step, one-camera heads; a choice that has these as fields overrides them.
    action_chunk = 1
    num_images = 1
    use_proprio = False

    @property
    def name(self) -> str:
        """The registered name (``tokens`` | ``l1``)."""
        return ActionHeadConfig.get_choice_name(type(self))

    def data_requirements(self) -> dict[str, Any]:
        """What the training data must provide: ``action_chunk`` (steps per sample), and whether it needs
        ``load_wrist`` (the wrist camera) and ``load_proprio``."""
        return {
            "action_chunk": self.action_chunk,
            "load_wrist": self.num_images == 2,
            "load_proprio": self.use_proprio,
        }

    def check_attention(self, attn_implementation: str) -> None:
        """Raise when the head cannot run with the LLM's attention kernel."""

    def run_name(self) -> str | None:
        """A part of the default run name, None when the head is the default."""
        return None

    def build_model(
        self, vla: nn.Module, base: nn.Module, cfg: StaMoAdapterConfig, head: nn.Module | None
    ) -> StaMoAdapterModel:
        """The adapter model over `vla` (peft-wrapped or merged `base`), with fresh extra modules.

        Args:
            vla: the VLA the adapter trains through: peft-wrapped for training, or `base` with the LoRA
                merged.
            base: the base VLA under the adapter (its vision backbone and LLM).
            cfg: the adapter configuration.
            head: the StaMo state head, or None when the adapter has no StaMo target.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement build_model()")

    def batch_transform(self, processor: Any, action_tokenizer: Any) -> Any:
        """The transform that turns training samples into this head's batches."""
        raise NotImplementedError(f"{type(self).__name__} must implement batch_transform()")

    def policy(self, adapter: StaMoAdapterModel, processor: Any, unnorm_key: str | None) -> Any:
        """The evaluation policy that acts with `adapter`.

        Args:
            adapter: the adapter model the policy acts with.
            processor: the base's processor (prompt and image preprocessing).
            unnorm_key: the dataset whose action statistics un-normalize the actions (None: the only one).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement policy()")

    def save_extra(self, model: StaMoAdapterModel, directory: Path) -> None:
        """Write the head's extra trainable modules (none by default)."""

    def load_extra(self, model: StaMoAdapterModel, directory: Path, is_trainable: bool) -> None:
        """Load what `save_extra` wrote into `model`'s freshly built extra modules (none by default).

        Args:
            model: the adapter model whose extra modules were just built.
            directory: the adapter directory `save_extra` wrote into.
            is_trainable: load the modules for further training (else frozen, for inference).
        """


@ActionHeadConfig.register_subclass("tokens")
@dataclass
class TokenActionHead(ActionHeadConfig):
    """OpenVLA's 7 autoregressive action tokens with cross-entropy (one step per call, one camera)."""

    def build_model(self, vla, base, cfg, head):
        """OpenVLA's adapter model: the token head needs no extra modules.

        Args:
            vla: the VLA the adapter trains through (`ActionHeadConfig.build_model`).
            base: the base VLA (unused: the tokens come from its LLM head).
            cfg: the adapter configuration.
            head: the StaMo state head, or None.
        """
        from stamo_vla.adapter.modeling_adapter import StaMoAdapterModel

        return StaMoAdapterModel(vla, cfg, head)

    def batch_transform(self, processor, action_tokenizer):
        from stamo_vla.vla.batch_transform import OpenVLABatchTransform

        return OpenVLABatchTransform(processor, action_tokenizer)

    def policy(self, adapter, processor, unnorm_key):
        """OpenVLA's policy: 7 action tokens decoded greedily per step.

        Args:
            adapter: the adapter model the policy acts with.
            processor: the base's processor.
            unnorm_key: the dataset whose action statistics un-normalize the actions (None: the only one).
        """
        from stamo_vla.vla.policy import OpenVLAPolicy

        return OpenVLAPolicy(adapter.vla, processor, unnorm_key=unnorm_key)


@ActionHeadConfig.register_subclass("l1")
@dataclass
class L1ActionHead(ActionHeadConfig):
    """OpenVLA-OFT: a K-step action chunk from one bidirectional pass, MLP-ResNet L1 regression head."""

    # Actions per call K (the chunk); OFT's LIBERO setting is 8.
    action_chunk: int = 1
    # Dimensions of one action (7 for LIBERO: 6 EEF deltas + gripper).
    action_dim: int = 7
    # Width of the head's MLP-ResNet; None = the LLM hidden size (upstream OFT: 4096).
    width: int | None = None
    # Camera images per sample: 1 = third-person only, 2 = third-person + wrist (channel-stacked pixels).
    num_images: int = 1
    # Feed the normalized proprio as one extra token after the vision patches.
    use_proprio: bool = False
    # Size of the proprio vector (8 for LIBERO: EEF pos 3 + axis-angle 3 + gripper qpos 2).
    proprio_dim: int = 8
    # FiLM-condition every ViT block on the average language embedding (OFT+).
    use_film: bool = False

    def __post_init__(self) -> None:
        for name in ("action_chunk", "action_dim", "proprio_dim"):
            check_positive_int(name, getattr(self, name))
        if self.width is not None:
            check_positive_int("width", self.width)
        check_choice("num_images", self.num_images, (1, 2))

    def check_attention(self, attn_implementation: str) -> None:
        if attn_implementation == "flash_attention_2":
            raise ValueError(
                "attn_implementation='flash_attention_2' cannot take the 4-D parallel-decoding mask of "
                "adapter.action_head.type='l1'; allowed: ['sdpa', 'eager']"
            )

    def run_name(self) -> str:
        return f"l1-K{self.action_chunk}-img{self.num_images}"

    def build_model(self, vla, base, cfg, head):
        """The OFT adapter model: this head's L1 action MLP (and proprio projector) over the LLM's hidden
        states.

        Args:
            vla: the VLA the adapter trains through (`ActionHeadConfig.build_model`).
            base: the base VLA; its vision backbone must be present (the extra image and FiLM read it).
            cfg: the adapter configuration.
            head: the StaMo state head, or None.
        """
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
            action_chunk=self.action_chunk,
            action_dim=self.action_dim,
            num_images=self.num_images,
            proprio_dim=self.proprio_dim if self.use_proprio else None,
            use_film=self.use_film,
            head_width=self.width,
        )
        oft.to(next(base.parameters()).device)
        return StaMoOFTAdapterModel(vla, cfg, head, oft)

    def batch_transform(self, processor, action_tokenizer):
        from stamo_vla.vla.oft_batch_transform import OFTBatchTransform

        return OFTBatchTransform(
            processor,
            action_tokenizer,
            self.action_chunk,
            self.num_images,
            self.use_proprio,
            self.proprio_dim,
        )

    def policy(self, adapter, processor, unnorm_key):
        """The OFT policy: a chunk of actions from the L1 head in one pass.

        Args:
            adapter: the OFT adapter model the policy acts with.
            processor: the base's processor.
            unnorm_key: the dataset whose action statistics un-normalize the actions (None: the only one).
        """
        from stamo_vla.adapter.oft_policy import OFTPolicy  # chunked actions from the L1 head, one pass

        return OFTPolicy(adapter, processor, unnorm_key=unnorm_key)

    def save_extra(self, model, directory):
        from stamo_vla.fileio import save_weights

        save_weights(model.oft.state_dict(), Path(directory) / OFT_WEIGHTS)

    def load_extra(self, model, directory, is_trainable):
        """Load the OFT modules `save_extra` wrote (``OFT_WEIGHTS``) into `model`.

        Args:
            model: the OFT adapter model whose modules were just built.
            directory: the adapter directory.
            is_trainable: leave the modules trainable (resume) instead of frozen (inference).
        """
        from safetensors.torch import load_file

        path = Path(directory) / OFT_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(
                f"{directory} has action_head='l1' but no {OFT_WEIGHTS} (the L1 action head, proprio projector and "
                "FiLM weights); it was not written by save_adapter/merge of an OFT adapter."
            )
        device = next(model.oft.parameters()).device
        model.oft.load_state_dict({k: v.to(device) for k, v in load_file(str(path)).items()})
        model.oft.requires_grad_(is_trainable)


ACTION_HEADS = tuple(ActionHeadConfig.get_known_choices())
# the flat fields of adapter configs written before the action head was a config choice -> the field of `l1`
LEGACY_FIELDS = {
    "action_chunk": "action_chunk",
    "action_dim": "action_dim",
    "action_head_width": "width",
    "num_images": "num_images",
    "use_proprio": "use_proprio",
    "proprio_dim": "proprio_dim",
    "use_film": "use_film",
}
# what the flat fields had to be with action_head='tokens'
_TOKENS_ONLY = {"action_chunk": 1, "num_images": 1, "use_proprio": False, "use_film": False}


def upgrade_legacy_action_head(data: dict) -> dict:
    """An adapter config dict with the old flat action-head fields (``action_head: l1``, ``action_chunk``,
    ``num_images``, ...) turned into the ``action_head`` choice (a new dict; current dicts pass unchanged).

    Raises:
        ValueError: an unknown head, or an OFT-only value with ``action_head='tokens'`` (naming field and value).
    """
    head = data.get("action_head", "tokens")
    flat = {k: data[k] for k in LEGACY_FIELDS if k in data}
    if isinstance(head, dict) and not flat:
        return data
    if isinstance(head, dict):
        raise ValueError(
            f"adapter config has both action_head={head!r} and the old flat fields {sorted(flat)}; keep only "
            "action_head"
        )
    check_choice("action_head", head, ACTION_HEADS)
    data = {k: v for k, v in data.items() if k not in LEGACY_FIELDS}
    if head == "tokens":
        for name, plain in _TOKENS_ONLY.items():
            if name in flat and flat[name] != plain:
                raise ValueError(
                    f"{name}={flat[name]!r} needs action_head='l1' (the OFT variant); action_head='tokens' "
                    f"supports only {name}={plain!r}"
                )
        data["action_head"] = {"type": "tokens"}
    else:
        data["action_head"] = {"type": head, **{LEGACY_FIELDS[k]: v for k, v in flat.items()}}
    return data
