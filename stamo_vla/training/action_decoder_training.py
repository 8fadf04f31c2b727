"""``stamo-vla train-action-decoder``: latent motion s_{t+k} - s_t (optionally with s_t) -> the k-step action chunk.

    stamo-vla train-action-decoder --data_root_dir runs/demo/data --dataset_name libero_spatial_no_noops \\
        --stamo_path runs/demo/stamo/checkpoints/step_00000300/model --horizon 4 --output_dir runs/action_decoder

Episodes are split (not frames) with a fixed seed; the held-out MSE in normalized action units is written to
<output_dir>/metrics.json beside the decoder (save_pretrained) and the dataset statistics that un-normalize its output.
Goal-conditioned use: ``ActionDecoder.from_pretrained(output_dir).decode(encoder, current_image, goal_image)``.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

from stamo_vla.configs import check_positive_int, check_range, parse_config
from stamo_vla.data.sources import iter_episodes
from stamo_vla.data.statistics import compute_statistics
from stamo_vla.data.transforms import normalized_actions
from stamo_vla.fileio import check_apart, dataset_inputs, write_json_atomic


@dataclass
class TrainActionDecoderConfig:
    """Action decoder training on an RLDS dataset."""

    # folder containing <dataset_name>/<version>/
    data_root_dir: str = "runs/demo/data"
    # labeled dataset (its actions are the targets)
    dataset_name: str = "libero_spatial_no_noops"
    # StaMo encoder or autoencoder directory
    stamo_path: str = "runs/demo/stamo"
    # k: frame gap of the motion and number of actions decoded
    horizon: int = 4
    # also feed the current state s_t
    condition_on_state: bool = False
    # MLP width and depth
    hidden_size: int = 512
    num_layers: int = 3
    # optimizer steps, learning rate, minibatch size
    max_steps: int = 2000
    lr: float = 1e-3
    batch_size: int = 256
    # fraction of episodes held out, and the seed of split, init and minibatches
    test_fraction: float = 0.2
    seed: int = 0
    # output directory (decoder, statistics, metrics.json)
    output_dir: str = "runs/action_decoder"

    def __post_init__(self) -> None:
        for name in ("horizon", "hidden_size", "num_layers", "max_steps", "batch_size"):
            check_positive_int(name, getattr(self, name))
        check_range("lr", self.lr, low=0, low_open=True)
        check_range("test_fraction", self.test_fraction, low=0, high=1, low_open=True, high_open=True)


def episode_windows(cfg: TrainActionDecoderConfig, encoder):
    """Per-episode (motion, state, normalized chunk) tensors and the action statistics used."""
    import torch

    from stamo_vla.stamo.pixels import uint8_to_pixels

    stats = compute_statistics(cfg.data_root_dir, cfg.dataset_name)
    k, out = cfg.horizon, []
    for ep in iter_episodes(cfg.data_root_dir, cfg.dataset_name, "train"):
        if not ep["has_action"] or len(ep["image"]) <= k:
            continue
        with torch.no_grad():
            pixels = uint8_to_pixels(ep["image"])
            states = torch.cat([encoder.encode(pixels[i : i + 64]) for i in range(0, len(pixels), 64)])
        actions = torch.from_numpy(normalized_actions(ep["action"], stats["action"]))
        n = len(states) - k
        chunks = torch.stack([actions[i : i + k] for i in range(n)])
        out.append((states[k:] - states[:n], states[:n], chunks))
    if len(out) < 2:
        raise ValueError(
            f"dataset '{cfg.dataset_name}' has {len(out)} labeled episodes longer than horizon={k}; need at least 2"
        )
    return out, stats


def train(cfg: TrainActionDecoderConfig) -> dict:
    """Fit the decoder on the training episodes, save it with its statistics, write metrics.json; returns them."""
    import torch

    from stamo_vla.data.splits import split_episodes
    from stamo_vla.stamo import StaMoEncoder, fingerprint
    from stamo_vla.stamo.action_decoder import ActionDecoder, ActionDecoderConfig, fit

    encoder = StaMoEncoder.from_pretrained(cfg.stamo_path).eval()
    episodes, stats = episode_windows(cfg, encoder)
    train_idx, test_idx = split_episodes(len(episodes), cfg.test_fraction, cfg.seed)

    def cat(idx, j):
        return torch.cat([episodes[i][j] for i in idx])

    torch.manual_seed(cfg.seed)
    decoder = ActionDecoder(
        ActionDecoderConfig(
            num_state_tokens=encoder.config.num_state_tokens,
            state_dim=encoder.config.state_dim,
            horizon=cfg.horizon,
            condition_on_state=cfg.condition_on_state,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
        )
    )
    state = cat(train_idx, 1) if cfg.condition_on_state else None
    decoder.fit_normalization(cat(train_idx, 0), state)
    curve = fit(
        decoder,
        (cat(train_idx, 0), state),
        cat(train_idx, 2),
        cfg.max_steps,
        cfg.lr,
        cfg.batch_size,
        seed=cfg.seed,
    )
    with torch.no_grad():
        test_state = cat(test_idx, 1) if cfg.condition_on_state else None
        test_mse = decoder.loss(cat(test_idx, 0), cat(test_idx, 2), test_state).item()
    decoder.save_pretrained(cfg.output_dir, dataset_statistics={cfg.dataset_name: stats})
    metrics = {
        "train_mse_final": curve[-1],
        "test_mse": test_mse,
        "train_episodes": train_idx,
        "test_episodes": test_idx,
        "stamo_fingerprint": fingerprint(encoder),
        "config": dataclasses.asdict(cfg),
    }
    write_json_atomic(f"{cfg.output_dir}/metrics.json", metrics)
    print(f"action decoder (k={cfg.horizon}): held-out MSE {test_mse:.4f}, final train MSE {curve[-1]:.4f}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    """``stamo-vla train-action-decoder``: parse a `TrainActionDecoderConfig` and train."""
    cfg = parse_config(TrainActionDecoderConfig, sys.argv[1:] if argv is None else argv)
    inputs = dataset_inputs("data_root_dir", cfg.data_root_dir, [cfg.dataset_name])
    check_apart({"output_dir": cfg.output_dir}, {"stamo_path": cfg.stamo_path, **inputs})
    train(cfg)
    return 0
