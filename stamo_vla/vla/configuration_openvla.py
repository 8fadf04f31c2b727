"""`OpenVLAConfig`: reads the upstream `openvla/openvla-7b` `config.json` and describes tiny test models.

The upstream checkpoints were written by a conversion script that built the Llama config with the
transformers-4.40 `LlamaConfig()` defaults, so their `text_config` only stores the few non-default fields.
`OPENVLA_LLAMA_DEFAULTS` fills the rest with those values (not the Llama-2 hub values: eps 1e-6 vs 1e-5,
2048 vs 4096 positions), which is what the released weights were trained with.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# Llama hyper-parameters the upstream checkpoints rely on when `text_config` omits them (reference §2.1).
# (num_key_value_heads and head_dim are left out: Llama derives them from num_attention_heads / hidden_size)
OPENVLA_LLAMA_DEFAULTS: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 32064,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "pad_token_id": 32000,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

# vision_backbone_id -> timm model ids (one per featurizer; two = fused), as in the upstream lookup tables.
VISION_BACKBONE_TO_TIMM_ID: dict[str, list[str]] = {
    "dinosiglip-vit-so-224px": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
    "dinoclip-vit-l-336px": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_large_patch14_clip_336.openai"],
    "dinov2-vit-l": ["vit_large_patch14_reg4_dinov2.lvd142m"],
    "siglip-vit-so400m": ["vit_so400m_patch14_siglip_224"],
    "clip-vit-l": ["vit_large_patch14_clip_224.openai"],
}
VISION_BACKBONE_TO_RESOLUTION: dict[str, int] = {
    "dinosiglip-vit-so-224px": 224,
    "dinoclip-vit-l-336px": 336,
    "dinov2-vit-l": 224,
    "siglip-vit-so400m": 224,
    "clip-vit-l": 224,
}
# CLIP featurizers use quick-GELU; everything else keeps timm's default activation.
VISION_BACKBONE_TO_ACT_LAYERS: dict[str, list[str | None]] = {
    "dinoclip-vit-l-336px": [None, "quick_gelu"],
    "clip-vit-l": ["quick_gelu"],
}
ARCH_SPECIFIERS = ("no-align+fused-gelu-mlp", "no-align+gelu-mlp", "gelu-mlp", "fused-gelu-mlp")
IMAGE_RESIZE_STRATEGIES = ("resize-naive", "letterbox")
LLAMA_EMPTY_TOKEN_ID = 29871  # SentencePiece "▁" that Llama emits between "Out:" and the action characters


class OpenVLAConfig(PreTrainedConfig):
    """Configuration of an OpenVLA policy: fused timm ViT featurizers, a GELU-MLP projector and a Llama LM.

    Reads the upstream `config.json` unchanged (extra upstream fields such as `hf_llm_id` or `auto_map`
    are kept as attributes). `timm_model_kwargs` is our addition for small test models: per-featurizer
    keyword overrides passed to `timm.create_model` on top of the named architecture, so tiny models are
    built through the same code path and get the same state-dict key names.
    """

    model_type = "openvla"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    # fused DINOv2 + SigLIP 224px by default, as in openvla-7b; a key of VISION_BACKBONE_TO_TIMM_ID
    vision_backbone_id: str = "dinosiglip-vit-so-224px"
    # name of the LLM recipe (informational; the architecture comes from text_config)
    llm_backbone_id: str = "llama2-7b-pure"
    # projector type; "fused-gelu-mlp" = 3 Linear layers with GELU (fused backbones), "gelu-mlp" = 2 layers
    arch_specifier: str = "no-align+fused-gelu-mlp"
    # True when two featurizers are channel-stacked; None = derive from vision_backbone_id
    use_fused_vision_backbone: bool | None = None
    # image preprocessing: "resize-naive" (stretch to the input size) or "letterbox" (pad to square first)
    image_resize_strategy: str = "resize-naive"
    # Llama config (dict or LlamaConfig); missing fields take OPENVLA_LLAMA_DEFAULTS
    text_config: dict | PreTrainedConfig | None = None
    # maximum text length of the tokenizer / collator
    llm_max_length: int = 2048
    # id of the padding token added after the base vocabulary (<PAD> = 32000 for Llama-2)
    pad_token_id: int = 32000
    # the LM vocab is padded to a multiple of this; base vocab = text_config.vocab_size - pad_to_multiple_of
    pad_to_multiple_of: int = 64
    # upstream flag kept for config round trips
    output_projector_states: bool = False
    # timm model ids per featurizer; None = derive from vision_backbone_id
    timm_model_ids: list[str] | None = None
    # timm activation override per featurizer (e.g. "quick_gelu" for CLIP); None = derive
    timm_override_act_layers: list[str | None] | None = None
    # featurizer input resolution (height, width); None = derive from vision_backbone_id
    image_sizes: list[int] | None = None
    # per-featurizer timm.create_model keyword overrides (small test models); None for real checkpoints
    timm_model_kwargs: list[dict] | None = None
    # dataset name -> {"action": {q01, q99, mask, ...}, "proprio": {...}}; used to un-normalize actions
    norm_stats: dict | None = None
    # number of action bins (256 edges over [-1, 1] -> 255 bin centres)
    n_action_bins: int = 256
    # token that follows "Out:" before the action tokens at training time (29871 = "▁" for Llama)
    empty_token_id: int = LLAMA_EMPTY_TOKEN_ID

    def __post_init__(self, **kwargs):
        self.text_config = _with_llama_defaults(self.text_config)
        if self.vision_backbone_id not in VISION_BACKBONE_TO_TIMM_ID and self.timm_model_ids is None:
            raise ValueError(
                f"OpenVLAConfig.vision_backbone_id: got {self.vision_backbone_id!r}; allowed "
                f"{sorted(VISION_BACKBONE_TO_TIMM_ID)} (or pass timm_model_ids explicitly)."
            )
        if self.arch_specifier not in ARCH_SPECIFIERS:
            raise ValueError(
                f"OpenVLAConfig.arch_specifier: got {self.arch_specifier!r}; allowed {list(ARCH_SPECIFIERS)}."
            )
        if self.image_resize_strategy not in IMAGE_RESIZE_STRATEGIES:
            raise ValueError(
                f"OpenVLAConfig.image_resize_strategy: got {self.image_resize_strategy!r}; "
                f"allowed {list(IMAGE_RESIZE_STRATEGIES)}."
            )
        if self.n_action_bins < 2:
            raise ValueError(
                f"OpenVLAConfig.n_action_bins: got {self.n_action_bins}; allowed: integers >= 2."
            )
        if self.timm_model_ids is None:
            self.timm_model_ids = list(VISION_BACKBONE_TO_TIMM_ID[self.vision_backbone_id])
        if self.use_fused_vision_backbone is None:
            self.use_fused_vision_backbone = len(self.timm_model_ids) == 2
        if self.timm_override_act_layers is None:
            default = [None] * len(self.timm_model_ids)
            self.timm_override_act_layers = list(
                VISION_BACKBONE_TO_ACT_LAYERS.get(self.vision_backbone_id, default)
            )
        if self.image_sizes is None:
            res = VISION_BACKBONE_TO_RESOLUTION.get(self.vision_backbone_id, 224)
            self.image_sizes = [res, res]
        n_featurizers = 2 if self.use_fused_vision_backbone else 1
        for name in ("timm_model_ids", "timm_override_act_layers"):
            if len(getattr(self, name)) != n_featurizers:
                raise ValueError(
                    f"OpenVLAConfig.{name}: got {getattr(self, name)}; need {n_featurizers} entries "
                    f"(use_fused_vision_backbone={self.use_fused_vision_backbone})."
                )
        if self.timm_model_kwargs is not None and len(self.timm_model_kwargs) != n_featurizers:
            raise ValueError(
                f"OpenVLAConfig.timm_model_kwargs: got {len(self.timm_model_kwargs)} entries; "
                f"need {n_featurizers} (one dict per featurizer) or None."
            )
        super().__post_init__(**kwargs)
        if self.text_config.vocab_size <= self.pad_to_multiple_of:
            raise ValueError(
                f"OpenVLAConfig.pad_to_multiple_of: got {self.pad_to_multiple_of} with text_config.vocab_size "
                f"{self.text_config.vocab_size}; the padded vocab must exceed the padding."
            )

    @property
    def base_vocab_size(self) -> int:
        """Size of the tokenizer's base vocabulary (32000 for Llama-2): action tokens are its last bins."""
        return self.text_config.vocab_size - self.pad_to_multiple_of


def _with_llama_defaults(text_config: dict | PreTrainedConfig | None) -> dict | PreTrainedConfig:
    if isinstance(text_config, PreTrainedConfig):
        return text_config
    merged = dict(OPENVLA_LLAMA_DEFAULTS)
    if "rope_parameters" in (text_config or {}):
        merged.pop("rope_theta")  # transformers 5 spelling given: do not mix it with the legacy key
    merged.update(text_config or {})
    return merged


def register_auto_classes() -> None:
    """Register `openvla` with AutoConfig and AutoModelForImageTextToText (idempotent).

    Upstream registered `AutoModelForVision2Seq`, which transformers 5 removed; its successor is
    `AutoModelForImageTextToText`.
    """
    from transformers import AutoModelForImageTextToText

    from stamo_vla.vla.modeling_openvla import OpenVLAForActionPrediction

    # exist_ok: registering again (same process) is a no-op, so callers need not track it
    AutoConfig.register("openvla", OpenVLAConfig, exist_ok=True)
    AutoModelForImageTextToText.register(OpenVLAConfig, OpenVLAForActionPrediction, exist_ok=True)
