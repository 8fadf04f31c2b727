"""Image sources for StaMo pretraining, held in memory as uint8 (N, 3, S, S) at the model's image size.

Variants are registered draccus choices (YAML ``source: {type: image_folder, ...}``):
    image_folder   every image file under a directory (recursive)
    rlds           frames of RLDS datasets via ``stamo_vla.data.rlds.iter_episodes`` (imported lazily)
    lerobot        frames of LeRobotDataset v3.0 datasets (``stamo_vla.data.lerobot``; no tensorflow)
    synthetic      coloured shapes (`stamo_vla.data.synthetic`), for presets that must run anywhere
    frames_file    frames saved once by `save_frames` (images, episode ids, episode names), e.g. by the study
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import draccus
import numpy as np
import torch

from stamo_vla.configs import check_positive_int
from stamo_vla.data.episodes import episode_id
from stamo_vla.data.sources import iter_episodes
from stamo_vla.data.synthetic import shapes
from stamo_vla.fileio import atomic_path, dataset_inputs

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _resize_uint8(frame: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, size, size) uint8 with PIL's antialiased bicubic filter."""
    from PIL import Image

    img = Image.fromarray(frame).convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


@dataclass
class ImageSourceConfig(draccus.ChoiceRegistry):
    """Where pretraining images come from."""

    def load(self, image_size: int) -> torch.Tensor:
        """All images as uint8 (N, 3, image_size, image_size)."""
        raise NotImplementedError(f"{type(self).__name__} must implement load()")

    def load_grouped(self, image_size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Images, the group (episode) id of each (N,) long, and each group's name.

        Held-out splits take whole groups, so no frame of a held-out episode is ever trained on. Sources
        without episodes put every image in its own group.
        """
        images = self.load(image_size)
        return images, torch.arange(len(images)), [str(i) for i in range(len(images))]

    def input_paths(self) -> dict[str, str | Path | None]:
        """The files or folders read, by option name (a run directory must lie apart from them)."""
        if hasattr(self, "data_root_dir"):
            return dataset_inputs("source.data_root_dir", self.data_root_dir, self.dataset_names)
        return {"source.path": getattr(self, "path", None)}


@ImageSourceConfig.register_subclass("image_folder")
@dataclass
class ImageFolderSource(ImageSourceConfig):
    """Every image file under a directory."""

    # Directory searched recursively for .png/.jpg/.jpeg/.bmp/.webp files.
    path: str = "data/images"
    # Use at most this many images, in sorted path order (None: all).
    max_images: int | None = None

    def load(self, image_size: int) -> torch.Tensor:
        from PIL import Image

        root = Path(self.path)
        if not root.is_dir():
            raise FileNotFoundError(f"source.path='{self.path}' is not a directory of images")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[: self.max_images]
        if not files:
            raise ValueError(f"source.path='{self.path}' has no image files ({', '.join(IMAGE_SUFFIXES)})")
        return torch.stack(
            [_resize_uint8(np.asarray(Image.open(f).convert("RGB")), image_size) for f in files]
        )


@ImageSourceConfig.register_subclass("rlds")
@dataclass
class RLDSSource(ImageSourceConfig):
    """Camera frames of RLDS datasets (the LIBERO layout ``<data_root_dir>/<dataset_name>/<version>/``)."""

    # Folder that contains the dataset folders.
    data_root_dir: str = "data/rlds"
    # Datasets to read frames from.
    dataset_names: list[str] = field(default_factory=lambda: ["libero_spatial_no_noops"])
    # Episode fields to take frames from: image (third-person) and/or wrist_image.
    cameras: list[str] = field(default_factory=lambda: ["image"])
    # Keep every k-th frame of each episode (neighbouring frames are nearly identical).
    frame_stride: int = 4
    # Stop after this many frames in total (None: all); frames are held in memory at image_size.
    max_images: int | None = None
    # tfds split to read.
    split: str = "train"

    data_format: ClassVar[str | None] = None  # None: the layout on disk decides (stamo_vla.data.sources)

    def __post_init__(self) -> None:
        for cam in self.cameras:
            if cam not in ("image", "wrist_image"):
                raise ValueError(
                    f"source.cameras entry {cam!r} is not valid; allowed: ['image', 'wrist_image']"
                )
        check_positive_int("source.frame_stride", self.frame_stride)

    def load(self, image_size: int) -> torch.Tensor:
        return self.load_grouped(image_size)[0]

    def load_grouped(self, image_size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Frames, their episode index, and each episode's ``<dataset>/<episode id>`` (`episode_id`)."""
        frames: list[torch.Tensor] = []
        groups: list[int] = []
        names: list[str] = []
        for name in self.dataset_names:
            for episode in iter_episodes(self.data_root_dir, name, split=self.split, fmt=self.data_format):
                for cam in self.cameras:
                    new = [_resize_uint8(f, image_size) for f in episode[cam][:: self.frame_stride]]
                    frames.extend(new)
                    groups.extend([len(names)] * len(new))
                names.append(f"{name}/{episode_id(episode)}")
                if self.max_images is not None and len(frames) >= self.max_images:
                    n = self.max_images
                    return torch.stack(frames[:n]), torch.tensor(groups[:n]), names
        if not frames:
            raise ValueError(f"no frames found in {self.dataset_names} under '{self.data_root_dir}'")
        return torch.stack(frames), torch.tensor(groups), names


@ImageSourceConfig.register_subclass("lerobot")
@dataclass
class LeRobotSource(RLDSSource):
    """Camera frames of LeRobotDataset v3.0 datasets (``data_root_dir``: a dataset root or the folder holding them;
    cameras map as in `stamo_vla.data.lerobot`: image = observation.images.image, wrist_image = ...image2)."""

    data_format: ClassVar[str | None] = "lerobot"


@ImageSourceConfig.register_subclass("synthetic")
@dataclass
class SyntheticSource(ImageSourceConfig):
    """Coloured shapes at distinct positions (no files needed)."""

    # Number of images.
    num_images: int = 64
    # Seed of the positions, sizes and backgrounds.
    seed: int = 0

    def load(self, image_size: int) -> torch.Tensor:
        return (shapes(self.num_images, image_size, self.seed) * 255).round().to(torch.uint8)


@ImageSourceConfig.register_subclass("frames_file")
@dataclass
class FramesFileSource(ImageSourceConfig):
    """Frames saved by `save_frames` (uint8 images with their episode ids), resized to the model's size."""

    # Path of the .pt file written by `save_frames`.
    path: str = "frames.pt"

    def load_grouped(self, image_size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"source.path='{self.path}' does not exist; write it with save_frames")
        data = torch.load(self.path, weights_only=True)
        images = data["images"]
        if images.shape[-1] != image_size:
            images = (
                torch.nn.functional.interpolate(
                    images.float(), size=(image_size, image_size), mode="bicubic", antialias=True
                )
                .round()
                .clamp(0, 255)
                .to(torch.uint8)
            )
        return images, data["groups"], list(data["names"])

    def load(self, image_size: int) -> torch.Tensor:
        return self.load_grouped(image_size)[0]


def save_frames(path: str | Path, images: torch.Tensor, groups: torch.Tensor, names: list[str]) -> None:
    """Write frames for `FramesFileSource`: uint8 (N, 3, S, S), episode ids (N,), episode names.

    Args:
        path: the file written.
        images: uint8 frames (N, 3, S, S).
        groups: the episode id of each frame (N,).
        names: the episode names, by id.
    """
    with atomic_path(path) as tmp:
        torch.save({"images": images, "groups": groups, "names": list(names)}, tmp)


def split_heldout(
    images: torch.Tensor,
    num_heldout: int,
    seed: int,
    groups: torch.Tensor | None = None,
    heldout_groups: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """A seeded split into (train images, held-out evaluation images, held-out group ids), by whole groups.

    Groups (episodes) are drawn in a seeded random order: `heldout_groups` of them, or when None the fewest
    that hold `num_heldout` images. Every frame of a held-out group leaves the training set; `num_heldout`
    evaluation images are spread evenly over the held-out frames. ``groups=None``: each image is a group.

    Args:
        images: the images (N, ...).
        num_heldout: evaluation images to hold out.
        seed: the seed of the split.
        groups: the group id of each image (N,), or None.
        heldout_groups: the number of groups held out, or None.
    """
    groups = torch.arange(len(images)) if groups is None else torch.as_tensor(groups)
    if groups.shape != (len(images),):
        raise ValueError(f"groups must have shape ({len(images)},); got {tuple(groups.shape)}")
    if num_heldout == 0 and not heldout_groups:
        return images, images[:0], []
    unique = groups.unique()
    order = unique[torch.randperm(len(unique), generator=torch.Generator().manual_seed(seed))].tolist()
    counts = {g: int((groups == g).sum()) for g in order}
    chosen: list[int] = []
    for g in order:
        if heldout_groups is not None and len(chosen) >= heldout_groups:
            break
        if heldout_groups is None and sum(counts[c] for c in chosen) >= num_heldout:
            break
        chosen.append(g)
    held = torch.isin(groups, torch.tensor(chosen))
    if held.all() or int(held.sum()) < num_heldout:
        raise ValueError(
            f"num_heldout={num_heldout} (heldout_groups={heldout_groups}) does not fit {len(images)} images in "
            f"{len(unique)} groups: the held-out groups hold {int(held.sum())} images and at least one group "
            "must stay for training"
        )
    held_idx = held.nonzero().flatten()
    pick = (
        held_idx[torch.linspace(0, len(held_idx) - 1, num_heldout).round().long()]
        if num_heldout
        else held_idx[:0]
    )
    return images[~held], images[pick], sorted(chosen)


def to_pixels(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float (B, 3, S, S) in [0, 1] (the StaMo image contract)."""
    return images_uint8.float() / 255
