"""StaMo pretraining: train compressor + DiT decoder with the flow-matching loss (DINOv2 and VAE frozen).

`pretrain(cfg)` is the whole run (setup -> the loop every recipe runs, `stamo_vla.training.loop` -> save);
``stamo-vla pretrain`` (`main`, also behind ``recipes/pretrain_stamo.py``) parses the config and calls it; the
studies call it in-process. It works as one process and under torchrun (DDP, gloo on CPU), resumes exactly from
the newest checkpoint in ``run_dir``, logs to tqdm / tensorboard / ``metrics.jsonl``, and on rank 0 writes
PSNR/SSIM (held-out images under ``eval/``, as many training images under ``eval_train/``) and sample sheets of
the held-out images (``samples/step_*.png``).
"""

from __future__ import annotations

import copy
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from stamo_vla.configs import check_positive_int, check_range, save_config
from stamo_vla.data.stamo_frames import ImageSourceConfig, SyntheticSource, split_heldout, to_pixels
from stamo_vla.fileio import write_json_atomic, writes_directory
from stamo_vla.stamo.configuration_stamo import StaMoConfig
from stamo_vla.stamo.modeling_autoencoder import StaMoAutoencoder
from stamo_vla.stamo.pixels import resize
from stamo_vla.training.batches import EpochBatches
from stamo_vla.training.checkpoint import find_latest_checkpoint, optimization_state
from stamo_vla.training.distributed import seed_everything, setup_accelerator
from stamo_vla.training.logger import TrainLogger
from stamo_vla.training.loop import Hooks, Training, resume_point, train_loop
from stamo_vla.training.optim import OptimizerConfig
from stamo_vla.training.resume_config import reconcile_run
from stamo_vla.training.run_config import RunConfig
from stamo_vla.training.vae_fit import fit_vae, latent_statistics, vae_health
from stamo_vla.viz.reconstruction import derangement, evaluate, save_sample_sheet

# what a checkpoint fixes: the StaMo model, the images it trains on and the held-out split
RESUME_FIXED = ("model", "source", "num_heldout", "heldout_groups", "split_seed")
# fitted when unset: a config.yaml written before the fit stayed out of it may record the fitted values
DERIVED = ("model.decoder.vae.scaling_factor", "model.decoder.vae.shift_factor")


@dataclass
class PretrainStaMoConfig(RunConfig):
    """Configuration of a StaMo pretraining run (presets: pretrain_stamo_*.yaml).

    The run fields (run_dir, resume, max_steps, save_steps, log_steps, ...) are `RunConfig`'s, shared with every
    recipe.
    """

    # The StaMo model (encoder + decoder); saved with every checkpoint.
    model: StaMoConfig = field(default_factory=StaMoConfig)
    # Image source: image_folder | rlds | synthetic (set `source.type`).
    source: ImageSourceConfig = field(default_factory=SyntheticSource)
    # Images held out from training for PSNR/SSIM and sample sheets; they are spread over whole held-out
    # groups (episodes for rlds sources), and no frame of a held-out episode is trained on.
    num_heldout: int = 8
    # Whole groups (episodes) held out (None: the fewest that hold num_heldout images). The held-out group
    # names are written to <run_dir>/heldout.json.
    heldout_groups: int | None = None
    # Seed of the held-out split (None: seed). Runs that must share one split (e.g. several seeds) set it.
    split_seed: int | None = None
    # Output directory: checkpoints/, samples/, tensorboard/, metrics.jsonl, config.yaml.
    run_dir: str | None = "runs/pretrain_stamo"
    # Keep only this many newest checkpoints.
    keep_last: int = 2
    # Optimizer and learning-rate schedule.
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    # Fit a random-init VAE on the training images for this many steps before training (0: do not).
    # Used when no pretrained VAE is available; ignored when decoder.vae.pretrained_path is set.
    vae_fit_steps: int = 0
    # Learning rate of the VAE fit.
    vae_fit_lr: float = 2e-3
    # Health gate of a fitted VAE: its held-out PSNR must beat the mean training frame's PSNR on the held-out
    # images by this many dB (else the decoder's pixels mean nothing; a loud warning, or an error when strict).
    vae_min_gain_db: float = 3.0
    # Health gate of the states: at this step the held-out flow loss from each image's own state must be below
    # the loss from another image's state by min_loss_gap (relative); 0 disables the check.
    gap_check_step: int = 0
    # Relative own/shuffled flow-loss gap required at gap_check_step: (shuffled - own) / own.
    min_loss_gap: float = 0.02
    # Failed health gates raise RuntimeError instead of printing a warning.
    strict_health: bool = False
    # Evaluate on the held-out images and write a sample sheet every this many steps (0: only at the end).
    eval_steps: int = 0
    # Euler steps when decoding for evaluation and sheets (None: decoder.flow.sample_steps).
    eval_sample_steps: int | None = None
    # States in the sheet's interpolation strip (endpoints included; the paper shows 8).
    interpolation_frames: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.heldout_groups is not None and self.heldout_groups < 1:
            raise ValueError(f"heldout_groups={self.heldout_groups} is not valid; it must be >= 1 or None")
        for name in ("eval_steps", "vae_fit_steps", "gap_check_step"):
            check_positive_int(name, getattr(self, name), allow_zero=True)
        check_range("vae_fit_lr", self.vae_fit_lr, low=0, low_open=True)
        check_range("vae_min_gain_db", self.vae_min_gain_db)
        check_range("min_loss_gap", self.min_loss_gap, low=0)
        if self.num_heldout == 1:
            raise ValueError("num_heldout=1 is not valid; use 0 (no evaluation) or >= 2 (shuffled baseline)")
        if self.interpolation_frames < 2:
            raise ValueError(
                f"interpolation_frames={self.interpolation_frames} is not valid; it must be >= 2"
            )


def warn_health(message: str, strict: bool) -> str:
    """A failed health gate: RuntimeError when strict, else a banner on stderr (and the message returned)."""
    if strict:
        raise RuntimeError(message)
    bar = "!" * 100
    print(f"\n{bar}\nHEALTH WARNING: {message}\n{bar}\n", file=sys.stderr, flush=True)
    return message


def build_model(
    cfg: PretrainStaMoConfig, train_pixels: torch.Tensor, heldout_pixels: torch.Tensor | None = None
):
    """A fresh autoencoder; a random-init VAE is first fitted on `train_pixels` when asked.

    The fitted latent scale is derived, not chosen: the model's own config records it (saved with every
    checkpoint), and ``cfg.model`` keeps what the user chose (unset = fit it), as config.yaml records.
    Returns ``(model, vae_health)``: the fitted VAE's held-out PSNR next to the mean-frame PSNR (empty when no
    VAE was fitted or nothing is held out).

    Args:
        cfg: the pretraining configuration.
        train_pixels: training images (N, 3, S, S) in [0, 1], which a random-init VAE is fitted on.
        heldout_pixels: held-out images for the VAE's health check (None: no check).
    """
    model = StaMoAutoencoder(copy.deepcopy(cfg.model))
    health: dict = {}
    if cfg.vae_fit_steps and cfg.model.decoder.vae.pretrained_path is None:
        vae = model.decoder.vae
        fit_vae(
            vae, train_pixels, cfg.vae_fit_steps, batch_size=cfg.batch_size, lr=cfg.vae_fit_lr, seed=cfg.seed
        )
        model.decoder.set_latent_scale(*latent_statistics(vae, train_pixels))
        if heldout_pixels is not None and len(heldout_pixels):
            health = vae_health(vae, train_pixels, heldout_pixels)
            if health["psnr_heldout"] - health["psnr_mean_frame"] < cfg.vae_min_gain_db:
                health["warning"] = warn_health(
                    f"the fitted VAE reconstructs held-out images at {health['psnr_heldout']:.2f} dB, not "
                    f"{cfg.vae_min_gain_db} dB above the mean training frame ({health['psnr_mean_frame']:.2f} dB): "
                    "decoded pixels cannot show what the states carry. Raise vae_fit_steps.",
                    cfg.strict_health,
                )
    return model, health


@torch.no_grad()
def loss_gap(ae, pixels: torch.Tensor, seed: int, batch_size: int = 16) -> dict[str, float]:
    """Flow loss from own vs shuffled (randomly paired) states on `pixels`, same noise: the cheap health check.

    Args:
        ae: the autoencoder.
        pixels: images (B >= 2, 3, S, S) in [0, 1].
        seed: fixes noise, sigmas and the pairing.
        batch_size: images per forward pass.
    """
    was_training = ae.training
    ae.eval()
    device = next(ae.parameters()).device
    target = resize(pixels[:batch_size], ae.config.image_size).to(device)
    z0 = ae.decoder.images_to_latents(target)
    states = ae.encode(target)
    own, _ = ae.decoder.loss(z0, states, torch.Generator().manual_seed(seed))
    shuffled, _ = ae.decoder.loss(
        z0, states[derangement(len(states), seed)], torch.Generator().manual_seed(seed)
    )
    ae.train(was_training)
    own, shuffled = own.item(), shuffled.item()
    return {"loss_own": own, "loss_shuffled": shuffled, "loss_gap": (shuffled - own) / max(own, 1e-12)}


def check_resume_config(requested: StaMoConfig, saved: StaMoConfig, checkpoint: Path) -> None:
    """Refuse to resume a checkpoint whose model differs from the requested one.

    The VAE latent scale is exempt when the request leaves it unset: a VAE fit records it in the saved model's
    config (the requested config is not changed).

    Args:
        requested: the model this run asks for.
        saved: the model the checkpoint holds.
        checkpoint: the checkpoint (named in the error).
    """
    req, got = requested.to_dict(), saved.to_dict()
    for key in ("scaling_factor", "shift_factor"):
        if req["decoder"]["vae"][key] is None:
            req["decoder"]["vae"][key] = got["decoder"]["vae"][key]
    if req != got:
        diff = [k for k in req if req[k] != got[k]]
        raise ValueError(
            f"run_dir holds checkpoint '{checkpoint}' of a different model (fields differ: {diff}). "
            "Use a new run_dir, or pass --resume false to start over in this one."
        )


class _Pixels:
    """The training images of each index batch of `batches`, as StaMo pixels; its position is theirs."""

    def __init__(self, images_u8: torch.Tensor, batches: EpochBatches):
        self.images_u8, self.batches = images_u8, batches

    def __iter__(self) -> _Pixels:
        return self

    def __next__(self) -> torch.Tensor:
        return to_pixels(self.images_u8[next(self.batches)])

    def state_dict(self) -> dict:
        return self.batches.state_dict()


class _Checks:
    """Pretraining's additions to the loop: the loss record, the own/shuffled loss gap at ``gap_check_step``,
    held-out evaluation with sample sheets every ``eval_steps``, and exact bottleneck statistics before every
    evaluation and checkpoint (`hooks`). The gap check and evaluation run on rank 0 only, where `log` is enabled."""

    def __init__(self, cfg: PretrainStaMoConfig, ae, images: tuple[torch.Tensor, torch.Tensor], log, health):
        self.cfg, self.ae, self.log, self.health = cfg, ae, log, health
        self.train_u8, self.heldout_u8 = images
        self.losses: dict[int, float] = {}
        order = torch.randperm(len(self.train_u8), generator=torch.Generator().manual_seed(cfg.seed))
        self.calibration = to_pixels(self.train_u8[order[:1024]])

    def hooks(self) -> Hooks:
        return Hooks(after_step=self.after_step, before_save=self.recalibrate)

    def recalibrate(self) -> None:
        """Exact bottleneck statistics before evaluating or saving (every rank alike)."""
        self.ae.encoder.recalibrate_bottleneck(self.calibration)

    def after_step(self, step: int, metrics: dict) -> None:
        cfg = self.cfg
        self.losses[step] = metrics["loss"]
        if self.log.enabled and len(self.heldout_u8) >= 2 and step == cfg.gap_check_step:
            self.check_gap(step)
        if cfg.eval_steps and step % cfg.eval_steps == 0 and step < cfg.max_steps:
            self.evaluate(step)

    def check_gap(self, step: int) -> None:
        """Log the held-out own/shuffled loss gap; warn (or raise, when strict) when it is below min_loss_gap."""
        cfg = self.cfg
        self.recalibrate()
        gap = loss_gap(self.ae, to_pixels(self.heldout_u8), cfg.seed)
        self.log.log(step, gap, prefix="health")
        self.health["gap_check"] = {"step": step, **gap}
        if gap["loss_gap"] < cfg.min_loss_gap:
            self.health["warnings"].append(
                warn_health(
                    f"at step {step} the held-out flow loss from each image's own state ({gap['loss_own']:.4f}) "
                    f"is not {cfg.min_loss_gap:.0%} below the loss from another image's state "
                    f"({gap['loss_shuffled']:.4f}): the states carry (almost) nothing yet. Check the VAE, "
                    "state_bottleneck and learning rate, or train longer.",
                    cfg.strict_health,
                )
            )

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out PSNR/SSIM and a sample sheet, and the same metrics on as many training images (rank 0)."""
        cfg = self.cfg
        if not self.log.enabled or cfg.num_heldout == 0:
            return {}
        self.recalibrate()
        pixels = to_pixels(self.heldout_u8)
        sheet = self.log.run_dir / "samples" / f"step_{step:08d}.png"
        save_sample_sheet(self.ae, pixels, sheet, cfg.eval_sample_steps, cfg.interpolation_frames)
        metrics = evaluate(self.ae, pixels, cfg.eval_sample_steps, seed=cfg.seed)
        self.log.log(step, metrics, prefix="eval")
        # the same metrics on as many training images: memorization vs generalization at a glance
        train = to_pixels(self.train_u8[: len(self.heldout_u8)])
        seen = evaluate(self.ae, train, cfg.eval_sample_steps, seed=cfg.seed)
        self.log.log(step, seen, prefix="eval_train")
        return {**metrics, **{f"train_{k}": v for k, v in seen.items()}}


def _split_images(cfg: PretrainStaMoConfig) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(training images, held-out images, the record of the split written to heldout.json), uint8."""
    images, groups, group_names = cfg.source.load_grouped(cfg.model.image_size)
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    train_u8, heldout_u8, held = split_heldout(
        images, cfg.num_heldout, split_seed, groups, cfg.heldout_groups
    )
    record = {
        "heldout_groups": [group_names[g] for g in held],
        "num_train_images": len(train_u8),
        "num_heldout_images": len(heldout_u8),
    }
    return train_u8, heldout_u8, record


def _model(cfg: PretrainStaMoConfig, latest: Path | None, images: tuple, health: dict) -> StaMoAutoencoder:
    """The checkpoint's autoencoder (its model checked against cfg.model), or a fresh one (VAE fitted)."""
    if latest is not None:
        model = StaMoAutoencoder.from_pretrained(latest / "model")
        check_resume_config(cfg.model, model.config, latest)
        return model
    train_u8, heldout_u8 = images
    model, health["vae"] = build_model(cfg, to_pixels(train_u8), to_pixels(heldout_u8))
    if "warning" in health["vae"]:
        health["warnings"].append(health["vae"]["warning"])
    return model


@writes_directory("pretrain", "run_dir", PretrainStaMoConfig.run_path, lambda cfg: cfg.source.input_paths())
def pretrain(cfg: PretrainStaMoConfig) -> dict:
    """Run (or resume) pretraining.

    Returns ``{"losses": {step: loss}, "eval": {...}, "health": {...}, "checkpoint": path}``; ``health`` holds
    the VAE gate, the own/shuffled loss gap at ``gap_check_step`` and the warnings raised (when not strict).
    """
    acc = setup_accelerator(cfg.mixed_precision)
    run_dir, main = cfg.run_path(), acc.is_main_process
    latest = resume_point(cfg, run_dir, main)  # past a damaged newest one
    if latest is not None:  # before the model is loaded: a changed model is refused, not trained
        reconcile_run(cfg, run_dir, latest, RESUME_FIXED, write=main, derived=DERIVED)
    train_u8, heldout_u8, split = _split_images(cfg)
    seed_everything(cfg.seed)
    health: dict = {"warnings": []}
    model = _model(cfg, latest, (train_u8, heldout_u8), health).to(acc.device)
    acc.wait_for_everyone()  # every rank has read the previous config.yaml before it is replaced
    if main:
        save_config(cfg, run_dir / "config.yaml")
        write_json_atomic(run_dir / "heldout.json", split)
    optimizer, scheduler, state = optimization_state(
        model.trainable_parameters(), cfg.optim, cfg.max_steps, latest, acc
    )  # restores the RNG streams too
    ddp_model, optimizer = acc.prepare(model, optimizer)
    if latest is None:
        seed_everything(cfg.seed + acc.process_index)  # distinct noise per rank
    batches = EpochBatches(
        len(train_u8), cfg.batch_size, cfg.seed, acc.process_index, acc.num_processes, state.data_state
    )
    config = asdict(cfg) if main else None
    with TrainLogger(run_dir, cfg.max_steps, state.step, main, cfg.wandb_project, config) as log:
        if main and health.get("vae"):
            log.log(0, {k: v for k, v in health["vae"].items() if k != "warning"}, prefix="vae")
        checks = _Checks(cfg, acc.unwrap_model(ddp_model), (train_u8, heldout_u8), log, health)
        training = Training(ddp_model, optimizer, scheduler, state)
        train_loop(cfg, run_dir, training, _Pixels(train_u8, batches), acc, log, checks.hooks())
        final = checks.evaluate(cfg.max_steps) if checks.losses else {}  # nothing new to evaluate otherwise
    latest = find_latest_checkpoint(run_dir)
    return {
        "losses": checks.losses,
        "eval": final,
        "health": health,
        "checkpoint": str(latest) if latest else None,
    }


def main(argv: list[str] | None = None) -> int:
    """``stamo-vla pretrain``: parse a `PretrainStaMoConfig` (``--config`` picks ``pretrain_stamo_<name>.yaml``)."""
    from stamo_vla.configs import parse_config

    pretrain(
        parse_config(PretrainStaMoConfig, sys.argv[1:] if argv is None else argv, prefix="pretrain_stamo_")
    )
    return 0
