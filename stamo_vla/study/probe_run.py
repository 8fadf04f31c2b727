"""``stamo-vla probe``: the latent-action probing protocol (StaMo paper §4.6, Figure 4) on any RLDS dataset,
fitted fairly (issue 12).

    stamo-vla probe --data_root_dir runs/demo/data --dataset_name libero_spatial_no_noops \\
        --stamo_path runs/demo/stamo --output_dir runs/demo/probe

For k in {1, 2, 4, 8} the same validated, early-stopped MLP predicts the normalized k-step action chunk from the
StaMo motion, the same encoder untrained, the DINOv2 mean-feature difference, the pooled-pixel difference and the
robot's proprio change (the ceiling); the mean predictor and zero action are reference rows. Held-out MSE (mean +-
std over seeded episode splits, and over leave-one-task-out folds) is written as JSON, markdown and a PNG plot
with error bars. The splits and the fit settings are recorded in the JSON.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

from stamo_vla.configs import check_positive_int, parse_config
from stamo_vla.fileio import check_apart, dataset_inputs, write_json_atomic, write_text_atomic


@dataclass
class ProbeConfig:
    """Latent-action probe on an RLDS dataset."""

    # folder containing <dataset_name>/<version>/
    data_root_dir: str = "runs/demo/data"
    # labeled dataset to probe (its actions are the targets)
    dataset_name: str = "libero_spatial_no_noops"
    # StaMo encoder or autoencoder directory; its frozen DINOv2 gives the DINOv2 row
    stamo_path: str = "runs/demo/stamo"
    # where probe.json, probe.md and probe.png go
    output_dir: str = "runs/probe"
    # horizons k (frames between the two images = actions per chunk)
    horizons: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    # fraction of episodes held out for testing in each random episode-level split
    test_fraction: float = 0.25
    # seeds of the random episode splits (and of the MLP init / minibatches of each)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # also run leave-one-task-out folds (needs episodes of >= 2 tasks)
    leave_one_task_out: bool = True
    # probe MLP width (the same MLP for every input)
    hidden_size: int = 256
    # linear layers of the probe MLP
    num_layers: int = 2
    # most optimizer steps per fit (early stopping on the validation episodes usually stops sooner)
    max_steps: int = 1000
    # learning rate
    lr: float = 1e-3
    # AdamW weight decay of the probe
    weight_decay: float = 1e-2
    # use at most this many episodes (0 = all)
    max_episodes: int = 0

    def __post_init__(self) -> None:
        if not self.horizons or any(k < 1 for k in self.horizons):
            raise ValueError(f"horizons={self.horizons} must be a non-empty list of positive integers")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction={self.test_fraction} must be in (0, 1)")
        if not self.seeds:
            raise ValueError(f"seeds={self.seeds} must name at least one split seed")
        for name in ("hidden_size", "num_layers", "max_steps"):
            check_positive_int(name, getattr(self, name))

    def fit_config(self):
        from stamo_vla.study.probe import FitConfig

        return FitConfig(
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            max_steps=self.max_steps,
            lr=self.lr,
            weight_decay=self.weight_decay,
        )


def write_outputs(results: dict, output_dir: str | Path, title: str) -> str:
    """probe.json, probe.md (one table per protocol) and probe.png under `output_dir`; returns the markdown.

    Args:
        results: the probe's results (`run_probe`).
        output_dir: the directory written into.
        title: the report's title.
    """
    from stamo_vla.study.probe import markdown_table, plot

    out = Path(output_dir)
    write_json_atomic(out / "probe.json", results)
    parts = [title, ""]
    for proto in results["protocols"]:
        parts += [
            f"**{proto}** — held-out MSE, mean ± std over splits:",
            "",
            markdown_table(results, proto),
            "",
        ]
    text = "\n".join(parts)
    write_text_atomic(out / "probe.md", text)
    plot(results, str(out / "probe.png"))
    return text


def run(cfg: ProbeConfig) -> dict:
    """Run the probe and write probe.json / probe.md / probe.png under cfg.output_dir; returns the results."""
    from stamo_vla.stamo import StaMoEncoder, fingerprint
    from stamo_vla.study.probe import episode_features, load_rlds_episodes, run_probe, untrained_copy

    encoder = StaMoEncoder.from_pretrained(cfg.stamo_path).eval()
    untrained = untrained_copy(encoder, seed=0)
    episodes = load_rlds_episodes(
        cfg.data_root_dir,
        cfg.dataset_name,
        lambda images: episode_features(encoder, images, untrained=untrained),
        cfg.max_episodes,
    )
    results = run_probe(
        episodes,
        cfg.horizons,
        cfg.test_fraction,
        cfg.seeds,
        cfg.fit_config(),
        leave_one_task=cfg.leave_one_task_out,
    )
    results["config"] = dataclasses.asdict(cfg)
    results["stamo_fingerprint"] = fingerprint(encoder)
    results["num_episodes"] = len(episodes)
    text = write_outputs(
        results,
        cfg.output_dir,
        f"Latent-action probe on `{cfg.dataset_name}` ({len(episodes)} episodes; splits by episode, "
        f"seeds {cfg.seeds}; normalized k-step action chunks).",
    )
    print(text)
    return results


def main(argv: list[str] | None = None) -> int:
    """``stamo-vla probe``: parse a `ProbeConfig` and run the probe."""
    cfg = parse_config(ProbeConfig, sys.argv[1:] if argv is None else argv)
    inputs = dataset_inputs("data_root_dir", cfg.data_root_dir, [cfg.dataset_name])
    check_apart({"output_dir": cfg.output_dir}, {"stamo_path": cfg.stamo_path, **inputs})
    run(cfg)
    return 0
