"""`stamo-vla viz --mode interpolate|transfer|reconstruct`: image sheets decoded by the StaMo DiT decoder.

    stamo-vla viz --mode reconstruct --stamo_path CKPT --images '[a.png,b.png,c.png]' --output_path recon.png
    stamo-vla viz --mode interpolate --stamo_path CKPT --images '[start.png,goal.png]' --steps 8 \
        --output_path strip.png
    stamo-vla viz --mode transfer --stamo_path CKPT --images '[src_a.png,src_b.png,target.png]' \
        --output_path transfer.png

``reconstruct``: originals | reconstructions. ``interpolate``: the decoded states evenly spaced between the two
images' states (the paper's motion interpolation). ``transfer``: the motion src_a -> src_b applied to the target
(tokens(3) + tokens(2) - tokens(1)), shown as src_a | src_b | target | decoded target + motion.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from stamo_vla.configs import check_choice, parse_config
from stamo_vla.stamo import StaMoAutoencoder
from stamo_vla.stamo.motion import interpolate, transfer
from stamo_vla.stamo.pixels import uint8_to_pixels
from stamo_vla.viz.sheets import save_sheet

MODES = ("reconstruct", "interpolate", "transfer")


def load_images(paths: list[str], size: int):
    """Image files -> (B, 3, size, size) float in [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    out = []
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"image {p} does not exist")
        img = Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC)
        out.append(uint8_to_pixels(np.asarray(img)))
    return torch.stack(out)


def render(mode: str, model, images, steps: int = 8, sample_steps: int | None = None, seed: int = 0) -> list:
    """Rows of images for `mode` (each row (n, 3, S, S) in [0, 1]); deterministic given `seed`.

    Args:
        mode: reconstruct | interpolate (two images) | transfer (three images: the motion 0 -> 1 applied to
            2).
        model: the StaMo autoencoder.
        images: the input images (B, 3, S, S) in [0, 1].
        steps: states in an interpolation.
        sample_steps: Euler steps when decoding (None: the model's default).
        seed: fixes the sampling noise.
    """
    import torch

    need = {"reconstruct": (1, None), "interpolate": (2, 2), "transfer": (3, 3)}[mode]
    if len(images) < need[0] or (need[1] is not None and len(images) != need[1]):
        raise ValueError(f"viz {mode} needs {need[1] or f'at least {need[0]}'} images; got {len(images)}")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        states = model.encode(images)
        if mode == "reconstruct":
            return [images, model.decode(states, steps=sample_steps, generator=g)]
        if mode == "interpolate":
            path = interpolate(states[0], states[1], steps)
            return [model.decode(path, steps=sample_steps, generator=g)]
        moved = transfer(states[0:1], states[1:2], states[2:3])
        return [torch.cat([images, model.decode(moved, steps=sample_steps, generator=g)])]


@dataclasses.dataclass
class VizConfig:
    """Options of ``stamo-vla viz``."""

    # reconstruct | interpolate | transfer
    mode: str = "reconstruct"
    # StaMo autoencoder directory (with a decoder)
    stamo_path: str = ""
    # input image files
    images: list[str] = dataclasses.field(default_factory=list)
    # output PNG
    output_path: str = ""
    # interpolation frames, endpoints included
    steps: int = 8
    # flow-matching sampling steps (None: the model's default)
    sample_steps: int | None = None
    # sampling noise seed
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES)
        for name in ("stamo_path", "output_path"):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty; give --{name}")
        if not self.images:
            raise ValueError("images is empty; give --images '[a.png,b.png]'")


def main(argv: list[str] | None = None) -> int:
    """``stamo-vla viz``: decode the images' states into a sheet."""
    cfg = parse_config(VizConfig, sys.argv[1:] if argv is None else argv)
    model = StaMoAutoencoder.from_pretrained(cfg.stamo_path).eval()
    rows = render(
        cfg.mode,
        model,
        load_images(cfg.images, model.config.image_size),
        cfg.steps,
        cfg.sample_steps,
        cfg.seed,
    )
    save_sheet(rows, cfg.output_path)
    print(f"{cfg.mode} sheet written to {cfg.output_path}")
    return 0
