"""Image processor, prompt builder and processor (tokenizer + images), compatible with upstream files.

Reads and writes `preprocessor_config.json` in the upstream layout. The normalization actually applied
upstream is bf16-rounded (the converter ran with a bf16 default dtype), so when `tvf_normalize_params` is
absent the means/stds are rounded to bf16 here too (reference §2.4).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stamo_vla.fileio import read_json, write_json_atomic
from stamo_vla.vla.batch_transform import OpenVLABatchTransform
from stamo_vla.vla.configuration_openvla import IMAGE_RESIZE_STRATEGIES, LLAMA_EMPTY_TOKEN_ID
from stamo_vla.vla.tokenization import load_tokenizer

__all__ = ["OpenVLABatchTransform", "OpenVLAImageProcessor", "OpenVLAProcessor", "build_prompt"]

PREPROCESSOR_CONFIG = "preprocessor_config.json"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"
# images with a side below input / MIN_IMAGE_FRACTION are refused (a 1x1 frame would be upscaled and acted on);
# LIBERO's 128 px and 256 px frames pass for a 224 px model
MIN_IMAGE_FRACTION = 4


# the prompt template around an empty (or blank) instruction
_EMPTY_PROMPT = re.compile(re.escape(PROMPT_TEMPLATE).replace(re.escape("{instruction}"), r"\s*"))


def build_prompt(instruction: str) -> str:
    """The OpenVLA (Llama-2 "pure") prompt: `In: What action should the robot take to {lower}?\\nOut:`."""
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"instruction: got {instruction!r}; need a non-empty task description string.")
    return PROMPT_TEMPLATE.format(instruction=instruction.lower())


def _read_json(file: Path) -> dict:
    return read_json(file, "Copy it again from the checkpoint it came from.")


def bf16_round(values: Any) -> list:
    """Round floats (nested lists) to the nearest bfloat16, as the upstream converter stored them."""
    return torch.tensor(values, dtype=torch.float64).to(torch.bfloat16).to(torch.float64).tolist()


class OpenVLAImageProcessor:
    """PIL/uint8 RGB images -> (B, 3 * n_backbones, H, W) float pixel values.

    Per backbone: (letterbox) -> bicubic antialiased resize to `input_sizes` -> [0, 1] -> normalize;
    then the per-backbone tensors are stacked on the channel axis (6 channels for fused backbones).

    Args:
        use_fused_vision_backbone: two backbones (DINOv2 + SigLIP) when True.
        image_resize_strategy: "resize-naive" or "letterbox".
        input_sizes: per backbone (3, H, W).
        means: per backbone RGB means as written in the config (unrounded).
        stds: per backbone RGB stds.
        normalize_params: per backbone {"mean", "std"} actually applied; default = bf16(means/stds).
    """

    def __init__(
        self,
        use_fused_vision_backbone: bool = True,
        image_resize_strategy: str = "resize-naive",
        input_sizes: list | None = None,
        means: list | None = None,
        stds: list | None = None,
        normalize_params: list[dict] | None = None,
    ):
        if image_resize_strategy not in IMAGE_RESIZE_STRATEGIES:
            raise ValueError(
                f"image_resize_strategy: got {image_resize_strategy!r}; allowed {list(IMAGE_RESIZE_STRATEGIES)}."
            )
        n = 2 if use_fused_vision_backbone else 1
        self.use_fused_vision_backbone = use_fused_vision_backbone
        self.image_resize_strategy = image_resize_strategy
        self.input_sizes = [list(s) for s in (input_sizes or [[3, 224, 224]] * n)]
        self.means = [list(m) for m in (means or ([IMAGENET_MEAN, HALF] if n == 2 else [HALF]))]
        self.stds = [list(s) for s in (stds or ([IMAGENET_STD, HALF] if n == 2 else [HALF]))]
        if normalize_params is None:
            normalize_params = [
                {"mean": bf16_round(m), "std": bf16_round(s)} for m, s in zip(self.means, self.stds)
            ]
        self.normalize_params = [{"mean": list(p["mean"]), "std": list(p["std"])} for p in normalize_params]
        for name in ("input_sizes", "means", "stds", "normalize_params"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"OpenVLAImageProcessor.{name}: need {n} entries, got {getattr(self, name)}."
                )

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.input_sizes[0][1:])

    def _resize(self, image):
        from PIL import Image

        if not isinstance(image, Image.Image):
            array = np.asarray(image)
            if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
                raise ValueError(
                    f"image: got array shape {array.shape} dtype {array.dtype}; need (H, W, 3) uint8 RGB."
                )
            image = Image.fromarray(array)
        image = image.convert("RGB")
        h, w = self.size
        if min(image.size) * MIN_IMAGE_FRACTION < min(h, w):
            raise ValueError(
                f"image: got {image.size[0]}x{image.size[1]} px, far below the model's {w}x{h} input (less than "
                f"1/{MIN_IMAGE_FRACTION} of it): upscaling it would invent the scene. Pass the camera frame "
                "(LIBERO's 256 or 128 px frames are fine)."
            )
        if self.image_resize_strategy == "letterbox":
            fill = tuple(int(x * 255) for x in self.means[0])
            side = max(image.size)
            canvas = Image.new("RGB", (side, side), fill)
            canvas.paste(image, ((side - image.size[0]) // 2, (side - image.size[1]) // 2))
            image = canvas
        if image.size != (w, h):
            image = image.resize((w, h), Image.Resampling.BICUBIC)  # PIL bicubic is antialiased
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)

    def __call__(self, images: Any, return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        """Process one image or a list of images into `{"pixel_values": (B, 3 * n, H, W) float32}`."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        if len(images) == 0:
            raise ValueError("images: got an empty list; need at least one image.")
        pixels = torch.stack([self._resize(img) for img in images]).float() / 255.0
        parts = []
        for p in self.normalize_params:
            mean = torch.tensor(p["mean"]).view(1, 3, 1, 1)
            std = torch.tensor(p["std"]).view(1, 3, 1, 1)
            parts.append((pixels - mean) / std)
        return {"pixel_values": torch.cat(parts, dim=1)}

    def to_dict(self) -> dict:
        """The upstream `preprocessor_config.json` fields."""
        n = len(self.input_sizes)
        return {
            "image_processor_type": "PrismaticImageProcessor",
            "processor_class": "PrismaticProcessor",
            "use_fused_vision_backbone": self.use_fused_vision_backbone,
            "image_resize_strategy": self.image_resize_strategy,
            "input_sizes": self.input_sizes,
            "interpolations": ["bicubic"] * n,
            "means": self.means,
            "stds": self.stds,
            "tvf_crop_params": [{"output_size": s[1:]} for s in self.input_sizes],
            "tvf_do_letterbox": self.image_resize_strategy == "letterbox",
            "tvf_letterbox_fill": [int(x * 255) for x in self.means[0]]
            if self.image_resize_strategy == "letterbox"
            else None,
            "tvf_normalize_params": [dict(p, inplace=False) for p in self.normalize_params],
            "tvf_resize_params": [
                {"antialias": True, "interpolation": 3, "max_size": None, "size": s[1:]}
                for s in self.input_sizes
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> OpenVLAImageProcessor:
        """Build from the upstream `preprocessor_config.json` fields (unknown fields are ignored)."""
        interps = data.get("interpolations")
        if interps and any(i != "bicubic" for i in interps):
            raise ValueError(
                f"preprocessor_config.json: interpolations {interps} unsupported; only 'bicubic'."
            )
        params = data.get("tvf_normalize_params")
        return cls(
            use_fused_vision_backbone=bool(data.get("use_fused_vision_backbone", True)),
            image_resize_strategy=data.get("image_resize_strategy", "resize-naive"),
            input_sizes=data.get("input_sizes"),
            means=data.get("means"),
            stds=data.get("stds"),
            normalize_params=[{"mean": p["mean"], "std": p["std"]} for p in params] if params else None,
        )

    def save_pretrained(self, save_dir: str | os.PathLike, extra: dict | None = None) -> None:
        write_json_atomic(Path(save_dir) / PREPROCESSOR_CONFIG, {**self.to_dict(), **(extra or {})})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> OpenVLAImageProcessor:
        file = Path(path) / PREPROCESSOR_CONFIG
        if not file.is_file():
            raise FileNotFoundError(
                f"{file} not found; an OpenVLA checkpoint directory needs {PREPROCESSOR_CONFIG}."
            )
        return cls.from_dict(_read_json(file))


class OpenVLAProcessor:
    """Tokenizer + image processor with the OpenVLA prompt.

    Args:
        image_processor: an `OpenVLAImageProcessor`.
        tokenizer: a transformers tokenizer (BOS added by default; right padding).
        empty_token_id: the "▁" id that follows "Out:" before action tokens (29871 for Llama-2).
    """

    def __init__(
        self,
        image_processor: OpenVLAImageProcessor,
        tokenizer: Any,
        empty_token_id: int = LLAMA_EMPTY_TOKEN_ID,
    ):
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.empty_token_id = int(empty_token_id)

    def prompt_ids(self, instruction: str) -> list[int]:
        """Token ids (BOS first) of the prompt for one instruction."""
        ids = self.tokenizer(build_prompt(instruction), add_special_tokens=True).input_ids
        self.check_length([len(ids)])
        return ids

    @property
    def max_length(self) -> int | None:
        """The tokenizer's (= the language model's) context in tokens; None when it declares none."""
        limit = getattr(self.tokenizer, "model_max_length", None)
        return int(limit) if isinstance(limit, int) and limit < 1_000_000 else None

    def check_length(self, lengths: list[int]) -> None:
        """Refuse prompts longer than the model's context (they would be cut or overflow position ids)."""
        limit = self.max_length
        too_long = [n for n in lengths if limit is not None and n > limit]
        if too_long:
            raise ValueError(
                f"prompt: {max(too_long)} tokens, longer than the model's context of {limit} tokens; shorten "
                "the instruction (LIBERO instructions are about 10-20 tokens)."
            )

    def __call__(
        self, text: str | list[str], images: Any, padding: bool | str = True, return_tensors: str = "pt"
    ) -> dict[str, torch.Tensor]:
        """Tokenize full prompts (`text`, already built) and process images.

        Returns:
            dict with `input_ids` (B, T) long, `attention_mask` (B, T) long (right padded) and
            `pixel_values` (B, 6, H, W) float32.
        """
        texts = [text] if isinstance(text, str) else list(text)
        images = images if isinstance(images, (list, tuple)) else [images]
        if len(texts) != len(images):
            raise ValueError(
                f"processor: got {len(texts)} texts and {len(images)} images; need one each per row."
            )
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip() or _EMPTY_PROMPT.fullmatch(t.strip()):
                raise ValueError(
                    f"processor: text {i} is {t!r}, a prompt with no task instruction; the policy would act "
                    "on nothing. Build it with build_prompt(<instruction>) from a non-empty instruction."
                )
        enc = self.tokenizer(texts, padding=padding, return_tensors=return_tensors)
        self.check_length([int(sum(m)) for m in enc["attention_mask"]])
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "pixel_values": self.image_processor(images)["pixel_values"],
        }

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def save_pretrained(self, save_dir: str | os.PathLike) -> None:
        """Write the tokenizer files and `preprocessor_config.json` (with our `empty_token_id`)."""
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(save_dir))
        self.image_processor.save_pretrained(save_dir, extra={"empty_token_id": self.empty_token_id})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> OpenVLAProcessor:
        """Load from a checkpoint directory (upstream layout or ours)."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"processor: directory {path} does not exist.")
        image_processor = OpenVLAImageProcessor.from_pretrained(path)
        data = _read_json(path / PREPROCESSOR_CONFIG)
        return cls(image_processor, load_tokenizer(path), data.get("empty_token_id", LLAMA_EMPTY_TOKEN_ID))
