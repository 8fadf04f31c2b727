"""The paper's latent-action linear-probing protocol (§4.6, Figure 4), on any set of episodes.

For each horizon k, tuples (I_n, I_{n+k}, A_n = a_n..a_{n+k-1}) are taken from every episode; the same MLP is
trained to predict A_n from three inputs: (a) the StaMo motion E(I_{n+k}) - E(I_n), (b) the pooled pixel
difference, (c) the DINOv2 mean-feature difference. Held-out MSE (normalized action units) is reported per k
and input. Episodes are split (not frames), with a fixed seed, so no frame of a test episode is seen in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from stamo_vla.stamo.action_decoder import fit, mlp

INPUTS = ("stamo_motion", "pooled_pixel_delta", "dinov2_mean_delta")


@dataclass
class EpisodeFeatures:
    """Per-frame features of one episode: name -> (T, F) float32, and normalized actions (T, A)."""

    features: dict[str, torch.Tensor]
    actions: torch.Tensor


def _to_pixels(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(images, copy=True)).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def episode_features(
    encoder, images: np.ndarray, batch_size: int = 32, pool: int = 16
) -> dict[str, torch.Tensor]:
    """Per-frame features for the three probe inputs.

    Args:
        encoder: a `StaMoEncoder` (its frozen DINOv2 provides input (c)).
        images: (T, H, W, 3) uint8 upright frames.
        pool: side of the average-pooled image used for the pixel baseline (pool x pool x 3 values).
    """
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be (T, H, W, 3) uint8; got {images.shape} {images.dtype}")
    out: dict[str, list[torch.Tensor]] = {name: [] for name in INPUTS}
    for start in range(0, len(images), batch_size):
        pixels = _to_pixels(images[start : start + batch_size])
        feats = encoder.features(pixels)
        out["stamo_motion"].append(encoder.compressor(feats).float().flatten(1))
        out["dinov2_mean_delta"].append(feats[:, 1:].mean(dim=1))
        out["pooled_pixel_delta"].append(torch.nn.functional.adaptive_avg_pool2d(pixels, pool).flatten(1))
    return {name: torch.cat(chunks) for name, chunks in out.items()}


def windows(ep: EpisodeFeatures, k: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """All (delta feature, k-step action chunk) pairs of one episode; empty when the episode is shorter than k+1."""
    t = ep.actions.shape[0]
    n = t - k
    if n <= 0:
        return {name: f[:0] for name, f in ep.features.items()}, ep.actions[:0].unsqueeze(1).repeat(1, k, 1)
    deltas = {name: f[k : k + n] - f[:n] for name, f in ep.features.items()}
    chunks = torch.stack([ep.actions[i : i + k] for i in range(n)])
    return deltas, chunks


def split_episodes(n: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic episode-level split; at least one episode on each side."""
    if n < 2:
        raise ValueError(f"the probe needs at least 2 episodes (one to train, one to test); got {n}")
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    return sorted(order[n_test:]), sorted(order[:n_test])


def run_probe(
    episodes: Sequence[EpisodeFeatures],
    horizons: Sequence[int] = (1, 2, 4, 8),
    test_fraction: float = 0.2,
    seed: int = 0,
    hidden_size: int = 256,
    num_layers: int = 2,
    steps: int = 1000,
    lr: float = 1e-3,
) -> dict:
    """Train the same MLP on each input for each horizon; return held-out MSE and the split that was used."""
    train_idx, test_idx = split_episodes(len(episodes), test_fraction, seed)
    results: dict = {
        "split": {"train_episodes": train_idx, "test_episodes": test_idx},
        "mse": {},
        "samples": {},
    }
    longest = max(ep.actions.shape[0] for ep in episodes)
    for k in horizons:
        if k >= longest:
            raise ValueError(f"horizon k={k} is not shorter than the longest episode ({longest} steps)")
        parts = {
            "train": [windows(episodes[i], k) for i in train_idx],
            "test": [windows(episodes[i], k) for i in test_idx],
        }
        y = {s: torch.cat([c for _, c in p]) for s, p in parts.items()}
        if len(y["train"]) == 0 or len(y["test"]) == 0:
            raise ValueError(f"horizon k={k}: no train or test window (episodes too short for this horizon)")
        results["samples"][str(k)] = {s: len(v) for s, v in y.items()}
        results["mse"][str(k)] = {}
        for name in INPUTS:
            x = {s: torch.cat([d[name] for d, _ in p]) for s, p in parts.items()}
            mean, std = x["train"].mean(0), x["train"].std(0).clamp(min=1e-6)
            xs = {s: (v - mean) / std for s, v in x.items()}
            torch.manual_seed(seed)
            out_dim = y["train"].shape[1] * y["train"].shape[2]
            net = mlp(xs["train"].shape[1], out_dim, hidden_size, num_layers)
            fit(net, (xs["train"],), y["train"].flatten(1), steps=steps, lr=lr, seed=seed)
            with torch.no_grad():
                mse = torch.mean((net(xs["test"]) - y["test"].flatten(1)) ** 2).item()
            results["mse"][str(k)][name] = mse
    return results


def markdown_table(results: dict) -> str:
    """Held-out MSE per horizon (rows) and input (columns); the lowest per row in bold."""
    lines = [
        "| k | " + " | ".join(INPUTS) + " | train / test windows |",
        "|---|" + "---|" * (len(INPUTS) + 1),
    ]
    for k, row in results["mse"].items():
        best = min(row.values())
        cells = [f"**{row[n]:.4f}**" if row[n] == best else f"{row[n]:.4f}" for n in INPUTS]
        s = results["samples"][k]
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {s['train']} / {s['test']} |")
    return "\n".join(lines)


def plot(results: dict, path: str) -> None:
    """MSE vs horizon, one line per input (PNG)."""
    from stamo_vla.optional import require

    require("matplotlib", "the probe plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [int(k) for k in results["mse"]]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in INPUTS:
        ax.plot(ks, [results["mse"][str(k)][name] for k in ks], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("horizon k (steps)")
    ax.set_ylabel("held-out MSE (normalized actions)")
    ax.set_title("Latent-action probe")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
