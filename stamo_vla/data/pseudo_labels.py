"""`stamo-vla label-latent-actions`: latent motions m_t = E(o_{t+h}) - E(o_t) for action-free episodes.

The paper's co-training pseudo-labels (§3.4): every pair of frames h apart in a video is labelled with the
difference of their frozen StaMo states. Sources are an RLDS dataset (e.g. one collected with
``stamo-vla collect --action_free true``) or a folder of frames with one sub-folder per episode.

Output layout::

    manifest.json                    StaMo fingerprint + path, horizon, source, N, D, format version
    episodes/<key>.safetensors       "latent_actions": (T, N, D) float32, row t = s_{min(t+h, T-1)} - s_t,
                                     "states": (T, N, D) float32; metadata: episode id, num_steps

An RLDS episode's id is `stamo_vla.data.episodes.episode_id` (file path + content digest; released LIBERO data
stores one file path for all demos of a task), a frame folder's its sub-folder name; ids that repeat are refused.

Episodes are written atomically one by one, so an interrupted run resumes where it stopped; a directory built
with another StaMo checkpoint or horizon is refused unless ``--overwrite true`` is given.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from stamo_vla.configs import check_positive_int, parse_config
from stamo_vla.data.episodes import EpisodeIdentities, episode_key
from stamo_vla.data.sources import iter_episodes
from stamo_vla.fileio import check_apart, dataset_inputs, read_json, save_weights, write_json_atomic
from stamo_vla.stamo import StaMoEncoder, fingerprint
from stamo_vla.stamo.pixels import uint8_to_pixels

# 2: RLDS episodes keyed by their identity (file path + content digest); 1 keyed them by file_path alone
FORMAT_VERSION = 2
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def latent_actions(states: np.ndarray, horizon: int) -> np.ndarray:
    """(T, N, D) states -> (T, N, D) motions s_{min(t+h, T-1)} - s_t (the last rows clamp at the episode end)."""
    check_positive_int("horizon", horizon)
    future = np.minimum(np.arange(len(states)) + horizon, len(states) - 1)
    return (states[future] - states).astype(np.float32)


def frame_folder_episodes(root: str | Path) -> Iterator[tuple[str, np.ndarray]]:
    """(episode id, (T, H, W, 3) uint8 frames) for each sub-folder of `root`, frames sorted by file name."""
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"frames folder {root} does not exist")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(f"{root} has no episode sub-folders; expected <root>/<episode>/<frame>.png")
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"episode folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
        yield folder.name, np.stack([np.array(Image.open(p).convert("RGB")) for p in files])


def rlds_episodes(data_root_dir: str | Path, dataset_name: str) -> Iterator[tuple[str, np.ndarray]]:
    """(episode id, (T, H, W, 3) uint8 primary-camera frames) of every episode of an RLDS dataset."""
    identities = EpisodeIdentities(f"dataset '{dataset_name}' under {data_root_dir}")
    for ep in iter_episodes(data_root_dir, dataset_name, "train"):
        identity = identities.add(ep)
        frames = ep.get("image")
        if frames is None or len(frames) == 0:
            raise ValueError(
                f"dataset '{dataset_name}' episode {ep.get('file_path')} has no images to encode"
            )
        yield identity, np.asarray(frames)


def _encode(encoder, frames: np.ndarray, batch_size: int, device: str) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(frames), batch_size):
            pixels = uint8_to_pixels(frames[i : i + batch_size])
            out.append(encoder.encode(pixels.to(device)).float().cpu().numpy())
    return np.concatenate(out)


# long: its Args section documents nine parameters; the body alone is under 50 lines
def label_latent_actions(
    episodes: Iterator[tuple[str, np.ndarray]],
    encoder,
    out_dir: str | Path,
    horizon: int = 1,
    source: str = "",
    stamo_path: str = "",
    batch_size: int = 32,
    overwrite: bool = False,
    device: str = "cpu",
) -> Path:
    """Encode every frame once and write per-episode latent actions; returns the output directory.

    Args:
        episodes: (episode name, (T, H, W, 3) uint8 frames) pairs.
        encoder: the StaMo encoder that gives each frame its state.
        out_dir: the directory the labels are written into.
        horizon: steps between the two states of a latent action.
        source: where the episodes came from, recorded in the manifest.
        stamo_path: the StaMo checkpoint of `encoder`, recorded in the manifest.
        batch_size: frames per encoder call.
        overwrite: replace labels this function wrote into `out_dir` before.
        device: the device the encoder runs on.
    """
    out = Path(out_dir)
    manifest = {
        "format_version": FORMAT_VERSION,
        "stamo_fingerprint": fingerprint(encoder),
        "stamo_path": str(stamo_path),
        "horizon": int(horizon),
        "source": source,
        "num_state_tokens": int(encoder.config.num_state_tokens),
        "state_dim": int(encoder.config.state_dim),
    }
    if (out / "manifest.json").is_file():
        existing = read_json(out / "manifest.json", "Delete the output folder's labels and label it again.")
        keys = ("format_version", "stamo_fingerprint", "horizon", "source")
        diffs = [
            f"{k}: {existing.get(k)!r} here, {manifest[k]!r} requested"
            for k in keys
            if existing.get(k) != manifest[k]
        ]
        if diffs and not overwrite:
            raise ValueError(
                f"{out} holds latent actions from another run ({'; '.join(diffs)}). Pass --overwrite true to replace "
                "them, or choose another --output_dir."
            )
        if diffs:
            shutil.rmtree(out)
    write_json_atomic(out / "manifest.json", manifest)
    encoder = encoder.to(device).eval().requires_grad_(False)
    for episode_id, frames in episodes:
        path = out / "episodes" / f"{episode_key(episode_id)}.safetensors"
        if path.is_file():
            continue  # done by an interrupted earlier run
        states = _encode(encoder, frames, batch_size, device)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_weights(
            {"latent_actions": latent_actions(states, horizon), "states": states.astype(np.float32)},
            path,
            metadata={"episode_id": episode_id, "num_steps": str(len(frames))},
        )
    return out


def load_latent_actions(out_dir: str | Path) -> dict[str, np.ndarray]:
    """episode id -> (T, N, D) latent actions, read back from a labelled directory."""
    from safetensors import safe_open

    result = {}
    for path in sorted((Path(out_dir) / "episodes").glob("*.safetensors")):
        with safe_open(str(path), framework="numpy") as f:
            result[f.metadata()["episode_id"]] = f.get_tensor("latent_actions")
    return result


@dataclasses.dataclass
class LabelLatentActionsConfig:
    """Options of ``stamo-vla label-latent-actions`` (give either dataset_name or frames_dir)."""

    # RLDS dataset under data_root_dir (e.g. collected with --action_free true)
    dataset_name: str | None = None
    # folder containing <dataset_name>/<version>/ (with dataset_name)
    data_root_dir: str | None = None
    # folder with one sub-folder of frames per episode (instead of dataset_name)
    frames_dir: str | None = None
    # StaMo encoder or autoencoder directory
    stamo_path: str = ""
    # output directory
    output_dir: str = ""
    # frame gap h of the motion
    horizon: int = 1
    # frames per encoder call
    batch_size: int = 32
    # torch device (None: cuda when available, else cpu)
    device: str | None = None
    # replace labels made with another checkpoint or horizon
    overwrite: bool = False

    def __post_init__(self) -> None:
        if (self.dataset_name is None) == (self.frames_dir is None):
            raise ValueError(
                f"dataset_name={self.dataset_name!r}, frames_dir={self.frames_dir!r}: give exactly one of them"
            )
        if self.dataset_name and not self.data_root_dir:
            raise ValueError(
                "dataset_name needs data_root_dir (the folder containing <dataset_name>/<version>/)"
            )
        for name in ("stamo_path", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty; give --{name}")
        for name in ("horizon", "batch_size"):
            check_positive_int(name, getattr(self, name))


def main(argv: list[str] | None = None) -> int:
    """``stamo-vla label-latent-actions``: encode the episodes and write their latent motions."""
    import torch

    cfg = parse_config(LabelLatentActionsConfig, sys.argv[1:] if argv is None else argv)
    inputs = dataset_inputs(
        "data_root_dir", cfg.data_root_dir, [cfg.dataset_name] if cfg.dataset_name else []
    )
    check_apart(
        {"output_dir": cfg.output_dir}, {"stamo_path": cfg.stamo_path, "frames_dir": cfg.frames_dir, **inputs}
    )
    episodes = (
        rlds_episodes(cfg.data_root_dir, cfg.dataset_name)
        if cfg.dataset_name
        else frame_folder_episodes(cfg.frames_dir)
    )
    source = f"rlds:{cfg.dataset_name}" if cfg.dataset_name else f"frames:{Path(cfg.frames_dir).resolve()}"
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = label_latent_actions(
        episodes,
        StaMoEncoder.from_pretrained(cfg.stamo_path),
        cfg.output_dir,
        cfg.horizon,
        source,
        cfg.stamo_path,
        cfg.batch_size,
        cfg.overwrite,
        device,
    )
    print(f"latent actions written to {out}")
    return 0
