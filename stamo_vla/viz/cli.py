"""`stamo-vla viz interpolate|transfer|reconstruct`: image sheets decoded by the StaMo DiT decoder.

    stamo-vla viz reconstruct --stamo CKPT --images a.png b.png c.png --out recon.png
    stamo-vla viz interpolate --stamo CKPT --images start.png goal.png --steps 8 --out strip.png
    stamo-vla viz transfer    --stamo CKPT --images src_a.png src_b.png target.png --out transfer.png

``reconstruct``: originals | reconstructions. ``interpolate``: the decoded states evenly spaced between the two
images' states (the paper's motion interpolation). ``transfer``: the motion src_a -> src_b applied to the target
(tokens(3) + tokens(2) - tokens(1)), shown as src_a | src_b | target | decoded target + motion.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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
        out.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(out)


def render(mode: str, model, images, steps: int = 8, sample_steps: int | None = None, seed: int = 0) -> list:
    """Rows of images for `mode` (each row (n, 3, S, S) in [0, 1]); deterministic given `seed`."""
    import torch

    from stamo_vla.stamo.motion import interpolate, transfer

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stamo-vla viz", description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--stamo", required=True, help="StaMo autoencoder directory (with a decoder)")
    parser.add_argument("--images", nargs="+", required=True, help="input image files")
    parser.add_argument("--out", required=True, help="output PNG")
    parser.add_argument("--steps", type=int, default=8, help="interpolation frames, endpoints included")
    parser.add_argument("--sample-steps", type=int, default=None, help="flow-matching sampling steps")
    parser.add_argument("--seed", type=int, default=0, help="sampling noise seed")
    args = parser.parse_args(argv)
    from stamo_vla.stamo import StaMoAutoencoder
    from stamo_vla.viz.sheets import save_sheet

    model = StaMoAutoencoder.from_pretrained(args.stamo).eval()
    rows = render(
        args.mode,
        model,
        load_images(args.images, model.config.image_size),
        args.steps,
        args.sample_steps,
        args.seed,
    )
    save_sheet(rows, args.out)
    print(f"{args.mode} sheet written to {args.out}")
    return 0
