"""The paper's latent-action probing protocol (§4.6, Figure 4), made fair and repeatable (issue 12).

For each horizon k, tuples (I_n, I_{n+k}, A_n = a_n..a_{n+k-1}) are taken from every episode, and the same
MLP is fitted to predict A_n (normalized actions) from the difference of per-frame features: the StaMo motion
E(I_{n+k}) - E(I_n), the same encoder untrained, the DINOv2 mean-feature difference, the pooled-pixel
difference and, as the ceiling, the robot's own proprioceptive state change. Two reference rows need no fit:
the mean predictor (the training chunks' mean) and zero action (no motion).

Every input gets the same fit (`FitConfig`):
- standardization with a floor (a share of the mean feature std), then clipping, so a feature that is
  near-constant on the training episodes cannot explode on held-out ones;
- a validation split of the training *episodes*, AdamW weight decay and early stopping on validation MSE;
- the output layer starts at zero weights and the training mean as bias, so step 0 *is* the mean predictor
  and the selected model is never worse than it on validation: a fitting accident cannot make an input look
  worse than no input.

Splits are always by episode, never by frame: several seeded random episode splits (mean +- std reported)
and leave-one-task-out folds.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from stamo_vla.configs import check_positive_int
from stamo_vla.data.sources import iter_episodes
from stamo_vla.data.splits import split_episodes
from stamo_vla.data.statistics import compute_statistics
from stamo_vla.data.transforms import normalized_actions
from stamo_vla.optional import require
from stamo_vla.stamo.action_decoder import mlp
from stamo_vla.stamo.modeling_encoder import StaMoEncoder
from stamo_vla.stamo.pixels import uint8_to_pixels

# the inputs `episode_features` computes (the first is the StaMo motion)
INPUTS = ("stamo_motion", "untrained_encoder", "dinov2_mean_delta", "pooled_pixel_delta")
ORACLE = "proprio_delta"  # the robot's own state change: the ceiling, when proprio is given
REFERENCE = ("mean_predictor", "zero_action")  # rows that need no fit
RANDOM_SPLIT = "random_episode_split"
LOTO = "leave_one_task_out"


@dataclass
class EpisodeFeatures:
    """Per-frame features of one episode: name -> (T, F) float32, normalized actions (T, A), its task."""

    features: dict[str, torch.Tensor]
    actions: torch.Tensor
    task: str | None = None


@dataclass
class FitConfig:
    """The one fit every probe input gets."""

    # Hidden width of the probe MLP.
    hidden_size: int = 256
    # Linear layers of the probe MLP.
    num_layers: int = 2
    # Most optimizer steps per fit (early stopping usually ends sooner).
    max_steps: int = 1000
    # AdamW learning rate.
    lr: float = 1e-3
    # AdamW weight decay (the regularization besides early stopping).
    weight_decay: float = 1e-2
    # Windows per minibatch.
    batch_size: int = 256
    # Validation MSE is measured every this many steps (step 0 included: the mean predictor).
    eval_steps: int = 25
    # Stop when validation has not improved for this many steps.
    patience: int = 200
    # Share of the training episodes held out for validation (at least one episode).
    val_fraction: float = 0.2
    # Standardization floor, as a share of the mean per-feature std on the training windows.
    std_floor: float = 0.1
    # Standardized inputs are clipped to [-clip, clip].
    clip: float = 5.0

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "max_steps", "batch_size", "eval_steps", "patience"):
            check_positive_int(f"fit.{name}", getattr(self, name))
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"fit.val_fraction={self.val_fraction} is not valid; it must be in (0, 1)")
        for name in ("lr", "std_floor", "clip"):
            if getattr(self, name) <= 0:
                raise ValueError(f"fit.{name}={getattr(self, name)} is not valid; it must be > 0")
        if self.weight_decay < 0:
            raise ValueError(f"fit.weight_decay={self.weight_decay} is not valid; it must be >= 0")


@dataclass
class Split:
    """One train/test partition of the episodes (indices)."""

    name: str
    train: list[int]
    test: list[int]
    seed: int = 0
    meta: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- features
def untrained_copy(encoder, seed: int = 0):
    """The same encoder architecture and frozen backbone with a freshly initialized compressor (and bottleneck)."""
    torch.manual_seed(seed)
    fresh = StaMoEncoder(copy.deepcopy(encoder.config))
    fresh.backbone.load_state_dict(encoder.backbone.state_dict())
    return fresh.eval().requires_grad_(False)


@torch.no_grad()
def episode_features(
    encoder, images: np.ndarray, batch_size: int = 32, pool: int = 16, untrained=None
) -> dict[str, torch.Tensor]:
    """Per-frame features for the probe inputs.

    Args:
        encoder: a `StaMoEncoder` in eval mode (its frozen DINOv2 gives ``dinov2_mean_delta``).
        images: (T, H, W, 3) uint8 upright frames.
        pool: side of the average-pooled image used for the pixel baseline (pool x pool x 3 values).
        untrained: the same encoder untrained (`untrained_copy`); default: made here with seed 0.
    """
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be (T, H, W, 3) uint8; got {images.shape} {images.dtype}")
    untrained = untrained if untrained is not None else untrained_copy(encoder)
    out: dict[str, list[torch.Tensor]] = {name: [] for name in INPUTS}
    for start in range(0, len(images), batch_size):
        pixels = uint8_to_pixels(images[start : start + batch_size])
        feats = encoder.features(pixels)
        out["stamo_motion"].append(encoder.tokens_from_features(feats).flatten(1))
        out["untrained_encoder"].append(untrained.tokens_from_features(feats).flatten(1))
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


def load_rlds_episodes(
    data_root_dir: str,
    dataset_name: str,
    feature_fn: Callable[[np.ndarray], dict[str, torch.Tensor]],
    max_episodes: int = 0,
    proprio: bool = True,
) -> list[EpisodeFeatures]:
    """Probe episodes from an RLDS dataset: `feature_fn(images)` features, the proprio Δ oracle, normalized actions.

    Actions are normalized with the dataset's q01/q99 statistics (gripper in the dataset convention); the
    task of each episode is its language instruction (for leave-one-task-out).

    Args:
        data_root_dir: the directory holding the dataset.
        dataset_name: the RLDS dataset.
        feature_fn: images (T, H, W, 3) -> {input name: (T, F) features}.
        max_episodes: read at most this many episodes (0: all).
        proprio: add the proprio difference oracle.
    """
    stats = compute_statistics(data_root_dir, dataset_name)["action"]
    episodes = []
    for ep in iter_episodes(data_root_dir, dataset_name, "train"):
        if not ep["has_action"]:
            continue
        if "image" not in ep or len(ep["image"]) == 0:
            raise ValueError(f"dataset '{dataset_name}' has no primary-camera images to probe")
        feats = feature_fn(ep["image"])
        if proprio:
            feats[ORACLE] = torch.from_numpy(np.array(ep["state"], np.float32))
        actions = normalized_actions(ep["action"], stats)
        episodes.append(
            EpisodeFeatures(feats, torch.from_numpy(np.array(actions)), str(ep["language_instruction"]))
        )
        if max_episodes and len(episodes) >= max_episodes:
            break
    if len(episodes) < 2:
        raise ValueError(
            f"dataset '{dataset_name}' has {len(episodes)} labeled episodes; the probe needs at least 2"
        )
    return episodes


# ------------------------------------------------------------------------------------------- splits
def random_splits(n: int, test_fraction: float, seeds: Sequence[int]) -> list[Split]:
    """One seeded episode split per seed.

    Args:
        n: the number of episodes.
        test_fraction: the fraction held out.
        seeds: one split per seed.
    """
    return [Split(f"seed{s}", *split_episodes(n, test_fraction, s), seed=s) for s in seeds]


def leave_one_task_out(tasks: Sequence[str | None]) -> list[Split]:
    """One fold per task: its episodes are the test set (empty when fewer than 2 tasks are known)."""
    names = sorted({t for t in tasks if t is not None})
    if len(names) < 2 or any(t is None for t in tasks):
        return []
    return [
        Split(
            f"task{i}",
            [j for j, t in enumerate(tasks) if t != name],
            [j for j, t in enumerate(tasks) if t == name],
            seed=i,
            meta={"task": name},
        )
        for i, name in enumerate(names)
    ]


# ------------------------------------------------------------------------------------------- fitting
def standardizer(x: torch.Tensor, floor: float, clip: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """(x - mean) / max(std, floor * mean std), clipped to [-clip, clip]; statistics from `x` only.

    The floor is relative to the input's own scale, so near-constant features are not blown up (the old
    ``std.clamp(1e-6)`` turned pixels that never change in training into 1e5-sized inputs on test).

    Args:
        x: the features (N, F) the statistics come from.
        floor: the std floor, as a fraction of the mean std.
        clip: the bound of the standardized values.
    """
    mean, std = x.mean(0), x.std(0) if len(x) > 1 else torch.zeros(x.shape[1])
    scale = std.mean()
    lo = floor * scale if scale > 0 else torch.tensor(1.0)
    std = std.clamp(min=float(lo))

    def apply(v: torch.Tensor) -> torch.Tensor:
        return ((v - mean) / std).clamp(-clip, clip)

    return apply


# long: its Args section documents seven parameters; the body alone is under 40 lines
def fit_probe(
    x_fit: torch.Tensor,
    y_fit: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    y_mean: torch.Tensor,
    cfg: FitConfig,
    seed: int,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict]:
    """Fit the probe MLP with early stopping on validation; returns (predict, info).

    The output layer starts at the mean predictor (zero weights, bias `y_mean`); the model kept is the
    one with the lowest validation MSE among the evaluated steps, step 0 included.

    Args:
        x_fit: training inputs (N, F).
        y_fit: training targets (N, A).
        x_val: validation inputs.
        y_val: validation targets.
        y_mean: the training targets' mean, the output layer's initial bias.
        cfg: the fit configuration.
        seed: seeds the initialization and batches.
    """
    norm = standardizer(x_fit, cfg.std_floor, cfg.clip)
    xf, xv = norm(x_fit), norm(x_val)
    torch.manual_seed(seed)
    net = mlp(xf.shape[1], y_fit.shape[1], cfg.hidden_size, cfg.num_layers)
    with torch.no_grad():
        net[-1].weight.zero_()
        net[-1].bias.copy_(y_mean)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(seed)

    def val_mse() -> float:
        net.eval()
        with torch.no_grad():
            value = torch.mean((net(xv) - y_val) ** 2).item()
        net.train()
        return value

    best, best_step, best_state = val_mse(), 0, copy.deepcopy(net.state_dict())
    net.train()
    for step in range(1, cfg.max_steps + 1):
        idx = torch.randint(0, len(xf), (min(cfg.batch_size, len(xf)),), generator=g)
        loss = torch.mean((net(xf[idx]) - y_fit[idx]) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % cfg.eval_steps == 0:
            current = val_mse()
            if current < best:
                best, best_step, best_state = current, step, copy.deepcopy(net.state_dict())
            elif step - best_step >= cfg.patience:
                break
    net.load_state_dict(best_state)
    net.eval()

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net(norm(x))

    return predict, {"best_step": best_step, "val_mse": best}


def _validation_split(train: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    if len(train) < 2:
        raise ValueError(
            f"a split has {len(train)} training episode(s); the probe needs at least 2 (one for validation)"
        )
    order = np.random.default_rng(10_000 + seed).permutation(train).tolist()
    n_val = min(max(1, round(len(train) * fraction)), len(train) - 1)
    return sorted(order[n_val:]), sorted(order[:n_val])


def evaluate_split(
    episodes: Sequence[EpisodeFeatures], split: Split, k: int, cfg: FitConfig
) -> tuple[dict[str, float], dict]:
    """Held-out MSE of every input and reference row for one split and horizon.

    Args:
        episodes: every episode.
        split: the train/test partition.
        k: the horizon (steps between the states of a latent action).
        cfg: the fit configuration.
    """
    fit_idx, val_idx = _validation_split(split.train, cfg.val_fraction, split.seed)
    parts = {
        name: [windows(episodes[i], k) for i in idx]
        for name, idx in (("fit", fit_idx), ("val", val_idx), ("test", split.test))
    }
    y = {s: torch.cat([c for _, c in p]).flatten(1) for s, p in parts.items()}
    if any(len(v) == 0 for v in y.values()):
        raise ValueError(
            f"horizon k={k}, split {split.name}: an empty fit/validation/test set (episodes too short)"
        )
    y_mean = torch.cat([y["fit"], y["val"]]).mean(0)  # all training episodes: the mean-predictor row
    mse = {
        "mean_predictor": torch.mean((y_mean - y["test"]) ** 2).item(),
        "zero_action": torch.mean(y["test"] ** 2).item(),
    }
    info = {"samples": {s: len(v) for s, v in y.items()}, "best_step": {}}
    for name in episodes[0].features:
        x = {s: torch.cat([d[name] for d, _ in p]).float() for s, p in parts.items()}
        predict, fit_info = fit_probe(x["fit"], y["fit"], x["val"], y["val"], y_mean, cfg, split.seed)
        mse[name] = torch.mean((predict(x["test"]) - y["test"]) ** 2).item()
        info["best_step"][name] = fit_info["best_step"]
    return mse, info


def _summary(per_split: dict[str, dict[str, list[float]]]) -> tuple[dict, dict]:
    mean = {k: {n: float(np.mean(v)) for n, v in row.items()} for k, row in per_split.items()}
    std = {
        k: {n: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for n, v in row.items()}
        for k, row in per_split.items()
    }
    return mean, std


# long: its Args section documents seven parameters; the body alone is under 45 lines
def run_probe(
    episodes: Sequence[EpisodeFeatures],
    horizons: Sequence[int] = (1, 2, 4, 8),
    test_fraction: float = 0.25,
    seeds: Sequence[int] = (0, 1, 2),
    fit: FitConfig | None = None,
    leave_one_task: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Fit every input at every horizon on every split; return per-split MSE and mean +- std per protocol.

    Protocols: ``random_episode_split`` (one split per seed) and, when episodes carry >= 2 tasks,
    ``leave_one_task_out``. ``results["mse"]`` is the random-split mean (one number per k and input).

    Args:
        episodes: every episode.
        horizons: the horizons k probed.
        test_fraction: the fraction of episodes held out in a random split.
        seeds: one random split per seed.
        fit: the fit configuration (None: the defaults).
        leave_one_task: add the leave-one-task-out protocol when there are >= 2 tasks.
        log: progress lines go here (None: nowhere).
    """
    fit = fit or FitConfig()
    if not episodes:
        raise ValueError("the probe needs episodes; got none")
    longest = max(ep.actions.shape[0] for ep in episodes)
    for k in horizons:
        if k >= longest:
            raise ValueError(f"horizon k={k} is not shorter than the longest episode ({longest} steps)")
    names = set(episodes[0].features)
    if any(set(ep.features) != names for ep in episodes):
        raise ValueError("every episode must carry the same feature names")
    protocols = {RANDOM_SPLIT: random_splits(len(episodes), test_fraction, seeds)}
    if leave_one_task:
        folds = leave_one_task_out([ep.task for ep in episodes])
        if folds:
            protocols[LOTO] = folds
    results: dict = {
        "inputs": list(episodes[0].features),
        "reference": list(REFERENCE),
        "horizons": [int(k) for k in horizons],
        "fit": dict(fit.__dict__),
        "protocols": {},
    }
    for proto, splits in protocols.items():
        per_split: dict[str, dict[str, list[float]]] = {}
        details = []
        for split in splits:
            row_info = {"name": split.name, "train": split.train, "test": split.test, **split.meta}
            for k in horizons:
                mse, info = evaluate_split(episodes, split, k, fit)
                for name, value in mse.items():
                    per_split.setdefault(str(k), {}).setdefault(name, []).append(value)
                row_info[f"k{k}"] = info
                if log:
                    log(
                        f"probe {proto} {split.name} k={k}: "
                        + ", ".join(f"{n} {v:.4f}" for n, v in mse.items())
                    )
            details.append(row_info)
        mean, std = _summary(per_split)
        results["protocols"][proto] = {"splits": details, "per_split": per_split, "mean": mean, "std": std}
    results["mse"] = results["protocols"][RANDOM_SPLIT]["mean"]
    return results


# ------------------------------------------------------------------------------------------- reports
def rows(results: dict) -> list[str]:
    """Table rows in display order: fitted inputs, then the reference rows."""
    return [*results["inputs"], *results["reference"]]


def markdown_table(results: dict, protocol: str = RANDOM_SPLIT) -> str:
    """Held-out MSE mean +- std per input (rows) and horizon (columns); the lowest fitted non-oracle in bold."""
    p = results["protocols"][protocol]
    ks = [str(k) for k in results["horizons"]]
    n = len(p["splits"])
    lines = [
        f"| input ({n} splits) | " + " | ".join(f"k={k}" for k in ks) + " |",
        "|---|" + "---:|" * len(ks),
    ]
    best = {
        k: min(v for name, v in p["mean"][k].items() if name in results["inputs"] and name != ORACLE)
        for k in ks
    }
    for name in rows(results):
        cells = []
        for k in ks:
            m, s = p["mean"][k][name], p["std"][k][name]
            text = f"{m:.4f} ± {s:.4f}"
            cells.append(
                f"**{text}**" if m == best[k] and name in results["inputs"] and name != ORACLE else text
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, path: str) -> None:
    """MSE vs horizon with mean +- std error bars, one line per row, one panel per protocol (PNG)."""
    require("matplotlib", "the probe plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protos = list(results["protocols"])
    fig, axes = plt.subplots(1, len(protos), figsize=(5.5 * len(protos), 4), squeeze=False)
    ks = results["horizons"]
    for ax, proto in zip(axes[0], protos):
        p = results["protocols"][proto]
        for i, name in enumerate(rows(results)):
            style = "--" if name in results["reference"] or name == ORACLE else "-"
            offset = 1 + 0.02 * (i - len(rows(results)) / 2)  # spread overlapping error bars apart
            ax.errorbar(
                [k * offset for k in ks],
                [p["mean"][str(k)][name] for k in ks],
                yerr=[p["std"][str(k)][name] for k in ks],
                marker="o",
                ls=style,
                capsize=3,
                label=name,
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("horizon k (steps)")
        ax.set_ylabel("held-out MSE (normalized actions)")
        ax.set_title(f"{proto} ({len(p['splits'])} splits, mean ± std)", fontsize=10)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
