"""The latent-action linear-probing protocol (StaMo paper §4.6, Figure 4) on any RLDS dataset.

    python eval/latent_action_probe.py --data_root_dir runs/demo/data --dataset_name libero_spatial_no_noops \\
        --stamo_path runs/demo/stamo --out_dir runs/demo/probe

For k in {1, 2, 4, 8} the same MLP is trained to predict the normalized k-step action chunk from (a) the StaMo
motion, (b) the pooled pixel difference, (c) the DINOv2 mean-feature difference; held-out MSE per k and input is
written as JSON, a markdown table and a PNG plot. The episode split and the seed are recorded in the JSON.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ProbeConfig:
    """Latent-action probe on an RLDS dataset."""

    # folder containing <dataset_name>/<version>/
    data_root_dir: str = "runs/demo/data"
    # labeled dataset to probe (its actions are the targets)
    dataset_name: str = "libero_spatial_no_noops"
    # StaMo encoder or autoencoder directory; its frozen DINOv2 gives input (c)
    stamo_path: str = "runs/demo/stamo"
    # where probe.json, probe.md and probe.png go
    out_dir: str = "runs/probe"
    # horizons k (frames between the two images = actions per chunk)
    horizons: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    # fraction of episodes held out for testing (episode-level split)
    test_fraction: float = 0.2
    # seed of the split and of MLP init / minibatches
    seed: int = 0
    # probe MLP width and depth (the same MLP for every input)
    hidden_size: int = 256
    num_layers: int = 2
    # optimizer steps per probe
    steps: int = 1000
    # learning rate
    lr: float = 1e-3
    # use at most this many episodes (0 = all)
    max_episodes: int = 0

    def __post_init__(self) -> None:
        if not self.horizons or any(k < 1 for k in self.horizons):
            raise ValueError(f"horizons={self.horizons} must be a non-empty list of positive integers")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction={self.test_fraction} must be in (0, 1)")
        for name in ("hidden_size", "num_layers", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")


def load_episodes(cfg: ProbeConfig, encoder) -> list:
    """Per-frame probe features + normalized actions of every labeled episode of the dataset."""
    import torch

    from stamo_vla.data.normalization import normalize
    from stamo_vla.data.rlds import iter_episodes
    from stamo_vla.data.statistics import compute_statistics
    from stamo_vla.data.transforms import standardize_gripper
    from stamo_vla.stamo.probe import EpisodeFeatures, episode_features

    stats = compute_statistics(cfg.data_root_dir, cfg.dataset_name)["action"]
    episodes = []
    for ep in iter_episodes(cfg.data_root_dir, cfg.dataset_name, "train"):
        if not ep["has_action"]:
            continue
        if "image" not in ep or len(ep["image"]) == 0:
            raise ValueError(f"dataset '{cfg.dataset_name}' has no primary-camera images to probe")
        actions = normalize(standardize_gripper(ep["action"]), stats)
        episodes.append(EpisodeFeatures(episode_features(encoder, ep["image"]), torch.from_numpy(actions)))
        if cfg.max_episodes and len(episodes) >= cfg.max_episodes:
            break
    if len(episodes) < 2:
        raise ValueError(
            f"dataset '{cfg.dataset_name}' has {len(episodes)} labeled episodes; the probe needs at least 2"
        )
    return episodes


def run(cfg: ProbeConfig) -> dict:
    """Run the probe and write probe.json / probe.md / probe.png under cfg.out_dir; returns the results."""
    from stamo_vla.fileio import write_json_atomic, write_text_atomic
    from stamo_vla.stamo import StaMoEncoder, fingerprint
    from stamo_vla.stamo.probe import markdown_table, plot, run_probe

    encoder = StaMoEncoder.from_pretrained(cfg.stamo_path).eval()
    episodes = load_episodes(cfg, encoder)
    results = run_probe(
        episodes,
        cfg.horizons,
        cfg.test_fraction,
        cfg.seed,
        cfg.hidden_size,
        cfg.num_layers,
        cfg.steps,
        cfg.lr,
    )
    results["config"] = dataclasses.asdict(cfg)
    results["stamo_fingerprint"] = fingerprint(encoder)
    results["num_episodes"] = len(episodes)
    out = Path(cfg.out_dir)
    write_json_atomic(out / "probe.json", results)
    table = markdown_table(results)
    write_text_atomic(
        out / "probe.md",
        f"Held-out MSE of normalized k-step action chunks on `{cfg.dataset_name}` ({len(episodes)} episodes, "
        f"test episodes {results['split']['test_episodes']}, seed {cfg.seed}).\n\n{table}\n",
    )
    plot(results, str(out / "probe.png"))
    print(table)
    return results


def main(argv: list[str] | None = None) -> dict:
    import draccus

    cfg = draccus.parse(ProbeConfig, args=sys.argv[1:] if argv is None else argv)
    return run(cfg)


if __name__ == "__main__":
    main()
