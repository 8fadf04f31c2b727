"""``stamo-vla stamo-study``: does the tiny StaMo carry the state, and do its differences act as latent actions?

    stamo-vla stamo-study                                  # every stage; rerun the same command to resume
    stamo-vla stamo-study --stamo_steps 3000 --stages '[stamo,reconstruction,probe,report]'

Stages (each skipped when its mark under ``<output_dir>/.stages/`` exists; a rerun resumes an interrupted one):

1. collect         scripted LIBERO demonstrations on several libero_spatial tasks (`stamo_vla.libero.collect`)
2. frames          the camera frames at model resolution, and the held-out split: whole EPISODES are held out
                   (never frames) and no stage below trains on them
3. vae             fit the random-init VAE on the training frames; gate: held-out VAE PSNR must beat the mean
                   training frame's PSNR by ``vae_min_gain_db`` or the study stops
4. backbone        pretrain the tiny DINOv2 self-supervised (masked-image modeling) and save it as a transformers
                   ``Dinov2Model`` directory, later frozen through ``backbone.pretrained_path``
5. stamo           pretrain StaMo (improved tiny preset) with the random backbone and with the pretrained one
6. reconstruction  held-out episodes: PSNR/SSIM decoded from each image's own state vs another image's state,
                   sample sheets (originals | own | shuffled | interpolation strip)
7. probe           the latent-action probe at k = 1, 2, 4, 8 over seeded episode splits and leave-one-task-out
8. report          ``<results_dir>/``: stamo_study.json, STAMO_STUDY.md and the PNGs (small files, committable)

Big outputs (data, checkpoints) stay under ``output_dir``; ``results_dir`` receives only JSON, markdown and PNG.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from stamo_vla.configs import check_positive_int, parse_config
from stamo_vla.data.rlds import resolve_dataset_dir
from stamo_vla.data.stamo_frames import FramesFileSource, RLDSSource, save_frames, split_heldout, to_pixels
from stamo_vla.fileio import follow_umask_tree, read_json, write_json_atomic
from stamo_vla.libero.collect import CollectConfig, collect
from stamo_vla.stamo.modeling_autoencoder import StaMoAutoencoder
from stamo_vla.stamo.modeling_decoder import build_vae
from stamo_vla.stamo.modeling_encoder import StaMoEncoder
from stamo_vla.stamo.pixels import uint8_to_pixels
from stamo_vla.study.probe import FitConfig, load_rlds_episodes, run_probe, untrained_copy
from stamo_vla.study.stages import StagedRun
from stamo_vla.study.stamo_study_report import write_report
from stamo_vla.training.backbone_pretrain import BackbonePretrainConfig, pretrain_backbone, save_backbone
from stamo_vla.training.checkpoint import find_latest_checkpoint
from stamo_vla.training.stamo_pretrain import PretrainStaMoConfig, pretrain, warn_health
from stamo_vla.training.vae_fit import fit_vae, latent_statistics, vae_health
from stamo_vla.viz.reconstruction import evaluate, save_sample_sheet

STAGES = ("collect", "frames", "vae", "backbone", "stamo", "reconstruction", "probe", "report")
BACKBONES = ("random", "pretrained")


@dataclass
class StaMoStudyConfig:
    """Options of ``stamo-vla stamo-study``."""

    # Working directory: data, checkpoints, logs and stage marks (large; not committed).
    output_dir: str = "runs/stamo_study"
    # Where the small outputs go (JSON, markdown, PNG): commit this folder.
    results_dir: str = "docs/results/stamo"
    # LIBERO suite to collect from.
    suite: str = "libero_spatial"
    # Task ids to collect (several: the probe's leave-one-task-out needs >= 2).
    task_ids: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    # Successful scripted demonstrations per task.
    episodes_per_task: int = 8
    # Simulator worker processes for collection.
    num_workers: int = 2
    # StaMo pretraining preset (stamo_vla/presets/pretrain_stamo_<preset>.yaml, or a YAML path).
    preset: str = "tiny"
    # Keep every k-th frame of each episode for VAE / backbone / StaMo training.
    frame_stride: int = 2
    # Whole episodes held out from every training stage; reconstruction is measured on them.
    heldout_episodes: int = 6
    # Seed of the held-out episode choice.
    split_seed: int = 0
    # Held-out images (spread over the held-out episodes) for the reconstruction table and the sheets.
    num_eval_images: int = 32
    # VAE fit steps (150 left the VAE barely above the mean frame on LIBERO frames; 700 reach ~31 dB).
    vae_fit_steps: int = 700
    # Images per VAE fit step.
    vae_batch_size: int = 16
    # Learning rate of the VAE fit.
    vae_lr: float = 2e-3
    # Gate: the VAE's held-out PSNR must beat the mean training frame's PSNR by this many dB, or the study stops.
    vae_min_gain_db: float = 3.0
    # Self-supervised pretraining of the tiny DINOv2 backbone.
    backbone_pretrain: BackbonePretrainConfig = field(
        default_factory=lambda: BackbonePretrainConfig(max_steps=1000, batch_size=32)
    )
    # Which backbones StaMo is pretrained with: random (random-init, frozen) and/or pretrained (stage 4).
    backbones: list[str] = field(default_factory=lambda: list(BACKBONES))
    # StaMo pretraining steps per run (the preset's batch size and learning rate).
    stamo_steps: int = 10000
    # StaMo pretraining seeds (each backbone x each seed is one run).
    stamo_seeds: list[int] = field(default_factory=lambda: [0])
    # Evaluate (own vs shuffled, spread) every this many StaMo steps.
    stamo_eval_steps: int = 2000
    # Probe horizons k (frames between the two images = actions per chunk).
    probe_horizons: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    # Seeds of the probe's random episode splits (mean +- std over them).
    probe_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # Share of the episodes each random split tests on.
    probe_test_fraction: float = 0.25
    # Most optimizer steps per probe fit (early stopping on validation episodes usually ends sooner).
    probe_max_steps: int = 600
    # Torch threads of this process (the tiny models gain nothing from more; shared CPUs lose a lot).
    threads: int = 1
    # Stages to run, in order (default: all).
    stages: list[str] = field(default_factory=lambda: list(STAGES))

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"stages={unknown} is not valid; allowed: {list(STAGES)}")
        bad = [b for b in self.backbones if b not in BACKBONES]
        if bad or not self.backbones:
            raise ValueError(
                f"backbones={self.backbones} is not valid; allowed: non-empty subset of {list(BACKBONES)}"
            )
        for name in ("episodes_per_task", "num_workers", "frame_stride", "heldout_episodes", "threads"):
            check_positive_int(name, getattr(self, name))
        for name in ("vae_fit_steps", "stamo_steps", "probe_max_steps"):
            check_positive_int(name, getattr(self, name))
        if self.num_eval_images < 2:
            raise ValueError(
                f"num_eval_images={self.num_eval_images} is not valid; it must be >= 2 (shuffled pairs)"
            )
        if len(self.task_ids) < 2:
            raise ValueError(
                f"task_ids={self.task_ids} is not valid; give >= 2 tasks (leave-one-task-out needs them)"
            )
        if not self.stamo_seeds or not self.probe_seeds:
            raise ValueError("stamo_seeds and probe_seeds must each name at least one seed")
        if not 0 < self.probe_test_fraction < 1:
            raise ValueError(
                f"probe_test_fraction={self.probe_test_fraction} is not valid; it must be in (0, 1)"
            )
        if not self.probe_horizons or min(self.probe_horizons) < 1:
            raise ValueError(f"probe_horizons={self.probe_horizons} is not valid; give positive integers")


def _log(msg: str) -> None:
    print(f"[stamo-study] {msg}", flush=True)


class StaMoStudy(StagedRun):
    """Paths and stages of one study directory."""

    STAGES = STAGES
    NAME = "stamo-study"

    def __init__(self, cfg: StaMoStudyConfig):
        super().__init__(cfg, cfg.output_dir, cfg.stages)
        self.data = self.out / "data"
        self.dataset = f"{cfg.suite}_no_noops"
        self.frames_file = self.out / "frames.pt"
        self.split_file = self.out / "split.json"
        self.vae_dir = self.out / "vae"
        self.backbone_dir = self.out / "backbone"
        self.results = Path(cfg.results_dir)

    # ---------------------------------------------------------------- helpers
    def preset(self):
        """The StaMo pretraining preset (a PretrainStaMoConfig)."""
        return parse_config(PretrainStaMoConfig, ["--config", self.cfg.preset], prefix="pretrain_stamo_")

    def run_name(self, backbone: str, seed: int) -> str:
        return f"{backbone}_backbone_seed{seed}"

    def runs(self) -> list[tuple[str, int]]:
        return [(b, s) for b in self.cfg.backbones for s in self.cfg.stamo_seeds]

    def stamo_dir(self, backbone: str, seed: int) -> Path:
        return self.out / "stamo" / self.run_name(backbone, seed)

    def load_split(self):
        """(train uint8, held-out eval uint8, split record) from the frames stage."""
        import torch

        data = torch.load(self.frames_file, weights_only=True)
        split = read_json(self.split_file, "Restore it, or run the study again in a new output folder.")
        held = torch.isin(data["groups"], torch.tensor(split["heldout_group_ids"]))
        return data["images"][~held], data["images"][torch.tensor(split["eval_indices"])], split

    # ---------------------------------------------------------------- stages
    def stage_collect(self) -> None:
        try:
            resolve_dataset_dir(self.data, self.dataset)
            _log(f"dataset {self.data / self.dataset} exists; collection skipped")
            return
        except (FileNotFoundError, ValueError):
            pass
        c = self.cfg
        summary = collect(
            CollectConfig(
                data_root_dir=str(self.data),
                suite=c.suite,
                task_ids=list(c.task_ids),
                episodes_per_task=c.episodes_per_task,
                num_workers=c.num_workers,
            )
        )
        _log(f"collected: {summary}")

    def stage_frames(self) -> None:
        import torch

        preset = self.preset()
        source = RLDSSource(
            data_root_dir=str(self.data),
            dataset_names=[self.dataset],
            cameras=["image"],
            frame_stride=self.cfg.frame_stride,
        )
        images, groups, names = source.load_grouped(preset.model.image_size)
        save_frames(self.frames_file, images, groups, names)
        _, _, held = split_heldout(
            images, self.cfg.num_eval_images, self.cfg.split_seed, groups, self.cfg.heldout_episodes
        )
        held_mask = torch.isin(groups, torch.tensor(held))
        held_idx = held_mask.nonzero().flatten()
        pick = torch.linspace(0, len(held_idx) - 1, self.cfg.num_eval_images).round().long()

        write_json_atomic(
            self.split_file,
            {
                "heldout_group_ids": held,
                "heldout_episodes": [names[g] for g in held],
                "eval_indices": held_idx[pick].tolist(),
                "num_frames": len(images),
                "num_train_frames": int((~held_mask).sum()),
                "num_heldout_frames": int(held_mask.sum()),
                "num_episodes": len(names),
                "episode_names": names,
            },
        )
        _log(f"{len(images)} frames of {len(names)} episodes; held out: {len(held)} episodes")

    def stage_vae(self) -> None:
        c = self.cfg
        preset = self.preset()
        train_u8, eval_u8, _ = self.load_split()
        train = to_pixels(train_u8)
        vae = build_vae(preset.model.decoder.vae, preset.model.image_size)
        start = time.perf_counter()
        losses = fit_vae(
            vae, train, c.vae_fit_steps, batch_size=c.vae_batch_size, lr=c.vae_lr, seed=c.split_seed
        )
        scale, shift = latent_statistics(vae, train)
        health = vae_health(vae, train, to_pixels(eval_u8))
        vae.save_pretrained(str(self.vae_dir))
        follow_umask_tree(self.vae_dir)  # diffusers writes its safetensors private whatever the umask
        record = {
            "steps": c.vae_fit_steps,
            "seconds": round(time.perf_counter() - start, 1),
            "scaling_factor": scale,
            "shift_factor": shift,
            "final_loss": losses[-1],
            **health,
        }
        write_json_atomic(self.out / "vae.json", record)
        _log(
            f"VAE held-out PSNR {health['psnr_heldout']:.2f} dB vs mean frame {health['psnr_mean_frame']:.2f} dB"
        )
        if health["psnr_heldout"] - health["psnr_mean_frame"] < c.vae_min_gain_db:
            warn_health(
                f"VAE gate failed: held-out PSNR {health['psnr_heldout']:.2f} dB is not {c.vae_min_gain_db} dB above "
                f"the mean frame ({health['psnr_mean_frame']:.2f} dB); raise vae_fit_steps and rerun the vae stage.",
                strict=True,
            )

    def stage_backbone(self) -> None:
        if "pretrained" not in self.cfg.backbones:
            _log("no run uses the pretrained backbone; skipped")
            return
        preset = self.preset()
        train_u8, eval_u8, _ = self.load_split()
        start = time.perf_counter()
        backbone, metrics = pretrain_backbone(
            preset.model.backbone,
            to_pixels(train_u8),
            to_pixels(eval_u8),
            self.cfg.backbone_pretrain,
            log=_log,
        )
        save_backbone(backbone, self.backbone_dir)
        metrics["seconds"] = round(time.perf_counter() - start, 1)
        metrics["config"] = dataclasses.asdict(self.cfg.backbone_pretrain)
        write_json_atomic(self.out / "backbone.json", metrics)

    def stamo_config(self, backbone: str, seed: int):
        """The preset with the study's frames, split, fitted VAE and (optionally) the pretrained backbone."""
        c = self.cfg
        cfg = self.preset()
        vae = read_json(self.out / "vae.json", "Restore it, or run the study again in a new output folder.")
        cfg.model.decoder.vae.pretrained_path = str(self.vae_dir.resolve())
        cfg.model.decoder.vae.scaling_factor = vae["scaling_factor"]
        cfg.model.decoder.vae.shift_factor = vae["shift_factor"]
        if backbone == "pretrained":
            cfg.model.backbone.pretrained_path = str(self.backbone_dir.resolve())
        cfg.source = FramesFileSource(path=str(self.frames_file))
        cfg.num_heldout = c.num_eval_images
        cfg.heldout_groups = c.heldout_episodes
        cfg.split_seed = c.split_seed
        cfg.seed = seed
        cfg.vae_fit_steps = 0
        cfg.max_steps = c.stamo_steps
        cfg.eval_steps = c.stamo_eval_steps
        cfg.save_steps = c.stamo_eval_steps
        cfg.run_dir = str(self.stamo_dir(backbone, seed))
        return cfg

    def stage_stamo(self) -> None:
        for backbone, seed in self.runs():
            done = self.stamo_dir(backbone, seed) / "result.json"
            if done.is_file():
                _log(f"StaMo {self.run_name(backbone, seed)} done earlier; skipped")
                continue
            _log(f"StaMo {self.run_name(backbone, seed)}: {self.cfg.stamo_steps} steps")
            latest = find_latest_checkpoint(self.stamo_dir(backbone, seed))
            start = time.perf_counter()
            result = pretrain(self.stamo_config(backbone, seed))
            write_json_atomic(
                done,
                {
                    "seconds": round(time.perf_counter() - start, 1),
                    # seconds cover only this call when it resumed an interrupted run
                    "resumed_from_step": int(latest.name.split("_")[-1]) if latest else 0,
                    "eval": result["eval"],
                    "health": result["health"],
                    "checkpoint": result["checkpoint"],
                },
            )

    def stage_reconstruction(self) -> None:
        _, eval_u8, split = self.load_split()
        pixels = to_pixels(eval_u8)
        table = {}
        for backbone, seed in self.runs():
            name = self.run_name(backbone, seed)
            model = StaMoAutoencoder.from_pretrained(
                find_latest_checkpoint(self.stamo_dir(backbone, seed)) / "model"
            )
            per_seed = [evaluate(model, pixels, seed=s) for s in (0, 1, 2)]  # three decoding noises
            metrics = {k: sum(m[k] for m in per_seed) / len(per_seed) for k in per_seed[0]}
            metrics["gap_db"] = metrics["psnr"] - metrics["psnr_shuffled"]
            metrics["gap_db_per_noise"] = [m["psnr"] - m["psnr_shuffled"] for m in per_seed]
            table[name] = metrics
            save_sample_sheet(model, pixels[:8], self.results / f"sheet_{name}.png", num_interp=8)
            # interpolation between two frames of one held-out episode, far apart in time
            first = split["eval_indices"][0]
            same = [i for i, idx in enumerate(split["eval_indices"]) if idx - first < 60]
            save_sample_sheet(
                model, pixels[[0, same[-1]]], self.results / f"interpolation_{name}.png", num_interp=8
            )
            _log(f"{name}: own {metrics['psnr']:.2f} dB, shuffled {metrics['psnr_shuffled']:.2f} dB")
        write_json_atomic(self.out / "reconstruction.json", table)

    def stage_probe(self) -> None:
        import torch

        c = self.cfg
        encoders = {}
        for backbone in c.backbones:
            ckpt = find_latest_checkpoint(self.stamo_dir(backbone, c.stamo_seeds[0])) / "model"
            enc = StaMoEncoder.from_pretrained(ckpt)
            encoders[backbone] = (enc, untrained_copy(enc, seed=0))

        @torch.no_grad()
        def features(images):
            out: dict[str, list] = {}
            for start in range(0, len(images), 64):
                pixels = uint8_to_pixels(images[start : start + 64])
                pooled = torch.nn.functional.adaptive_avg_pool2d(pixels, 16).flatten(1)
                out.setdefault("pooled_pixel_delta", []).append(pooled)
                for backbone, (enc, untrained) in encoders.items():
                    feats = enc.features(pixels)
                    tag = f"[{backbone} backbone]"
                    out.setdefault(f"stamo_motion{tag}", []).append(
                        enc.tokens_from_features(feats).flatten(1)
                    )
                    out.setdefault(f"untrained_encoder{tag}", []).append(
                        untrained.tokens_from_features(feats).flatten(1)
                    )
                    out.setdefault(f"dinov2_mean_delta{tag}", []).append(feats[:, 1:].mean(1))
            return {k: torch.cat(v) for k, v in out.items()}

        episodes = load_rlds_episodes(str(self.data), self.dataset, features)
        fit = FitConfig(max_steps=c.probe_max_steps, patience=150)
        results = run_probe(episodes, c.probe_horizons, c.probe_test_fraction, c.probe_seeds, fit, log=_log)
        results["num_episodes"] = len(episodes)
        results["tasks"] = sorted({ep.task for ep in episodes})
        results["stamo_seed"] = c.stamo_seeds[0]
        write_json_atomic(self.out / "probe.json", results)

    def stage_report(self) -> None:
        write_report(self)


def main(argv: list[str] | None = None) -> int:
    import torch

    cfg = parse_config(StaMoStudyConfig, sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    times = StaMoStudy(cfg).main()
    _log("stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    _log(f"total {time.perf_counter() - start:.0f} s this call; results in {cfg.results_dir}")
    return 0


main_stamo_study = main
