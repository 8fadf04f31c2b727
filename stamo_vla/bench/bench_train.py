"""Training-step throughput of the policy study's two recipes, old path vs new path side by side in one run.

* ``finetune``: LoRA fine-tuning as ``stamo-vla study`` runs it (``finetune_study_small``: the ``small`` base at
  112 px, batch 16, two cameras, proprio, L1 chunk head);
* ``base``: full training of the ``small`` base (``stamo-vla train-base``: token actions, batch 32).

Each variant has its own model, optimizer and sample stream over the same synthetic LIBERO-spec data; the
variants take turns, a few steps each per round, so load on a shared machine hits them alike. Every step is
split into stages: data (next batch), vision (backbone + projector forward), llm (language-model forward),
head (the rest of the forward: embeddings, heads, loss), backward, optimizer. The roofline row counts the
step's FLOP with ``torch.utils.flop_counter`` and compares the achieved FLOP/s with a matmul at the model's
shape (tokens x hidden x MLP width) in fp32 and bf16.

Variants: ``old`` decodes and resizes every JPEG through TensorFlow at every use; ``new`` keeps the decoded
frames in memory (``data.frame_cache_mb``; the same pixels, so the same losses); ``new_bf16`` adds bf16
autocast on the CPU, a change of arithmetic that is measured here and not used by any recipe.

    stamo-vla bench --only '[train]'                 # a few minutes
    stamo-vla bench --only '[train]' --quick true    # tiny batches, one timed step per variant
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import torch

STAGES = ("data", "vision", "llm", "head", "backward", "optimizer")
FRAME_CACHE_MB = 1024
VARIANTS = {  # name: (frame_cache_mb, bf16 autocast)
    "old": (0, False),
    "new": (FRAME_CACHE_MB, False),
    "new_bf16": (FRAME_CACHE_MB, True),
}
INSTRUCTIONS = ("put the black bowl on the plate", "pick up the black bowl next to the ramekin")


# ---------------------------------------------------------------------------------------------- setup
def write_data(root: Path, episodes: int, length: int) -> str:
    """A synthetic LIBERO-spec RLDS dataset (smooth moving frames, two cameras, two instructions).

    Args:
        root: the data root the dataset is written under.
        episodes: episodes to write.
        length: steps per episode.
    """
    from stamo_vla.bench.bench_rlds_loader import _episode
    from stamo_vla.data.rlds_writer import write_rlds_dataset

    def gen():
        for i in range(episodes):
            yield {**_episode(i, length), "language_instruction": INSTRUCTIONS[i % 2]}

    write_rlds_dataset(gen(), root, "bench_train")
    return "bench_train"


class Trainer:
    """One variant's model, sample stream and optimizer, stepped stage by stage.

    Args:
        model: ``model(batch) -> (loss, metrics)``.
        batches: iterator of model batches.
        optimizer, scheduler: over the trainable parameters.
        stages: {"vision": [modules], "llm": [modules]} whose forward time is measured with hooks.
        bf16: run the forward under CPU bf16 autocast.
        max_grad_norm: clip as the recipe does (part of the optimizer stage); None: no clipping.
    """

    def __init__(
        self, model, batches, optimizer, scheduler, stages: dict, bf16: bool = False, max_grad_norm=None
    ):
        self.model, self.batches, self.optimizer, self.scheduler = model, batches, optimizer, scheduler
        self.max_grad_norm = max_grad_norm
        self.bf16, self._hook_s = bf16, {name: 0.0 for name in stages}
        self.llm_config = stages["llm"][0].config  # hidden and MLP widths, for the roofline
        self.llm_rows = 0  # batch x sequence length of the last LLM forward (text and image tokens)
        for name, modules in stages.items():
            for module in modules:
                self._time_forward(module, name)

    def _time_forward(self, module: torch.nn.Module, name: str) -> None:
        start: list[float] = []
        module.register_forward_pre_hook(lambda *_: start.append(time.perf_counter()))

        def done(_module, _args, output):
            self._hook_s[name] += time.perf_counter() - start.pop()
            if name == "llm":
                self.llm_rows = int(output[0].shape[0] * output[0].shape[1])

        module.register_forward_hook(done)

    def batch(self) -> dict:
        from stamo_vla.training.finetune import SUPERVISION

        batch = next(self.batches)
        batch.pop(SUPERVISION, None)
        return batch

    def forward(self, batch: dict) -> torch.Tensor:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with autocast:
            loss, _ = self.model(batch)
        return loss

    def step(self) -> dict[str, float]:
        """One optimizer step; seconds per stage."""
        self.model.train()
        self._hook_s = dict.fromkeys(self._hook_s, 0.0)
        t0 = time.perf_counter()
        batch = self.batch()
        t1 = time.perf_counter()
        loss = self.forward(batch)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        if self.max_grad_norm is not None:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        inner = sum(self._hook_s.values())
        return {
            "data": t1 - t0,
            **self._hook_s,
            "head": t2 - t1 - inner,
            "backward": t3 - t2,
            "optimizer": t4 - t3,
        }

    def count_flop(self) -> tuple[int, int]:
        """(FLOP of one forward + backward, LLM rows: batch x sequence) on the next batch; no optimizer step."""
        from torch.utils.flop_counter import FlopCounterMode

        batch = self.batch()
        with FlopCounterMode(display=False) as counter:
            self.forward(batch).backward()
        self.optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops(), self.llm_rows


def finetune_trainer(root: str, dataset: str, base_dir: str, variant: str, quick: bool) -> Trainer:
    """The study's fine-tuning (preset finetune_study_small, target none) on `base_dir`, as one variant.

    Args:
        root: the data root directory.
        dataset: the dataset name under `root`.
        base_dir: the base checkpoint the adapter is fine-tuned on.
        variant: the variant's name ("old", "new", ...).
        quick: a short run (smoke test of the benchmark).
    """
    from stamo_vla.configs import parse_config
    from stamo_vla.training.checkpoint import optimization_state
    from stamo_vla.training.distributed import setup_accelerator
    from stamo_vla.training.finetune import build_dataloader, build_model, load_base
    from stamo_vla.training.finetune_config import FinetuneConfig

    cache_mb, bf16 = VARIANTS[variant]
    args = ["--config", "study_small", "--vla_path", base_dir, "--data.data_root_dir", root]
    args += ["--data.dataset_names", f"[{dataset}]", "--data.frame_cache_mb", str(cache_mb)]
    args += ["--adapter.target", "none", "--run_dir", str(Path(root) / "runs" / variant)]
    args += ["--data.shuffle_buffer_size", "2000"]
    if quick:
        args += ["--batch_size", "2"]
    cfg = parse_config(FinetuneConfig, args, prefix="finetune_")
    accelerator = setup_accelerator(cfg.mixed_precision)
    torch.manual_seed(cfg.seed)
    base, processor = load_base(cfg, Path(cfg.run_dir), accelerator)
    model = build_model(cfg, base, None, None, None)
    _, loader = build_dataloader(cfg, base, processor, False, 0, 1)
    optimizer, scheduler, _ = optimization_state(
        model.trainable_parameters(), cfg.optim, cfg.max_steps, None, accelerator
    )
    stages = {"vision": [base.vision_backbone, base.projector], "llm": [base.get_decoder()]}
    clip = cfg.optim.max_grad_norm
    return Trainer(model, iter(loader), optimizer, scheduler, stages, bf16=bf16, max_grad_norm=clip)


def base_trainer(root: str, dataset: str, variant: str, quick: bool) -> Trainer:
    """Full training of the ``small`` base (``stamo-vla train-base`` defaults), as one variant.

    Args:
        root: the data root directory.
        dataset: the dataset name under `root`.
        variant: the variant's name ("old", "new", ...).
        quick: a short run (smoke test of the benchmark).
    """
    from stamo_vla.data.config import DataConfig
    from stamo_vla.training.base_training import BaseTrainConfig, FullTraining, _dataloader, _load_or_build
    from stamo_vla.training.checkpoint import optimization_state
    from stamo_vla.training.distributed import setup_accelerator

    cache_mb, bf16 = VARIANTS[variant]
    data = DataConfig(
        data_root_dir=root,
        dataset_names=[dataset],
        image_size=112,
        train_percent=100,
        shuffle_buffer_size=2000,
        frame_cache_mb=cache_mb,
    )
    cfg = BaseTrainConfig(data=data, run_dir=str(Path(root) / "runs" / f"base_{variant}"), resume=False)
    if quick:
        cfg.batch_size = 2
    accelerator = setup_accelerator(cfg.mixed_precision)
    torch.manual_seed(cfg.seed)
    vla, processor = _load_or_build(cfg, Path(cfg.run_dir), None)
    model = FullTraining(vla)
    _, loader = _dataloader(cfg, vla, processor, 0, 1)
    optimizer, scheduler, _ = optimization_state(
        model.parameters(), cfg.optim, cfg.max_steps, None, accelerator
    )
    stages = {"vision": [vla.vision_backbone, vla.projector], "llm": [vla.get_decoder()]}
    clip = cfg.optim.max_grad_norm
    return Trainer(model, iter(loader), optimizer, scheduler, stages, bf16=bf16, max_grad_norm=clip)


# ------------------------------------------------------------------------------------------- measure
def matmul_peak(m: int, k: int, n: int, dtype: torch.dtype, repeats: int) -> float:
    """Measured FLOP/s of an (m, k) @ (k, n) matmul in `dtype` (the best of `repeats`).

    Args:
        m: rows of the left matrix.
        k: the shared dimension.
        n: columns of the right matrix.
        dtype: the matrices' dtype.
        repeats: timed runs; the best counts.
    """
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best


def compare(trainers: dict[str, Trainer], warm_batches: int, rounds: int, steps: int) -> dict[str, dict]:
    """Per variant: median seconds per stage over the timed steps (variants take turns, `steps` each round).

    Every variant first draws `warm_batches` batches (one pass over the data: the new path's frames are then
    decoded once, as in a run's later epochs) and trains one step (allocator, first-call costs).

    Args:
        trainers: the variants, by name.
        warm_batches: batches each variant draws before timing.
        rounds: timed rounds.
        steps: steps per variant and round.
    """
    for trainer in trainers.values():
        for _ in range(warm_batches):
            trainer.batch()
        trainer.step()
    times: dict[str, list[dict]] = {name: [] for name in trainers}
    for _ in range(rounds):
        for name, trainer in trainers.items():
            times[name] += [trainer.step() for _ in range(steps)]
    out = {}
    for name, rows in times.items():
        total = statistics.median(sum(r.values()) for r in rows)
        out[name] = {"step_s": total, **{f"{s}_s": statistics.median(r[s] for r in rows) for s in STAGES}}
    return out


def roofline(trainer: Trainer, step_s: float, llm_config, quick: bool) -> dict:
    """Counted FLOP of a step, achieved FLOP/s, and the matmul peak at the LLM's MLP shape in fp32 and bf16.

    Args:
        trainer: the variant measured.
        step_s: its seconds per step.
        llm_config: the LLM config (its MLP shape sets the matmul measured).
        quick: a short run (smaller matmuls).
    """
    flop, tokens = trainer.count_flop()
    m, k, n = tokens, llm_config.hidden_size, llm_config.intermediate_size
    repeats = 2 if quick else 10
    peaks = {
        name: matmul_peak(m, k, n, dt, repeats)
        for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    return {
        "step_gflop": flop / 1e9,
        "achieved_gflops": flop / step_s / 1e9,
        "matmul_shape": f"{m}x{k}x{n}",
        "peak_fp32_gflops": peaks["fp32"] / 1e9,
        "peak_bf16_gflops": peaks["bf16"] / 1e9,
        "fraction_of_fp32_peak": flop / step_s / peaks["fp32"],
    }


def bench_recipe(name: str, make, batch_size: int, quick: bool, warm_batches: int) -> dict:
    """Old vs new (vs new + bf16) of one recipe: samples/s, ratios, per-stage seconds and the roofline.

    Args:
        name: the recipe ("finetune" or "train-base").
        make: builds one variant's trainer from its name.
        batch_size: samples per batch.
        quick: a short run (smoke test of the benchmark).
        warm_batches: batches each variant draws before timing.
    """
    trainers = {variant: make(variant) for variant in VARIANTS}
    rounds, steps = (1, 1) if quick else (2, 2)
    stages = compare(trainers, warm_batches, rounds, steps)
    old = stages["old"]["step_s"]
    result = {"batch_size": batch_size}
    for variant, row in stages.items():
        result[variant] = {"samples_per_s": batch_size / row["step_s"], **row}
    result["speedup_new_vs_old"] = old / stages["new"]["step_s"]
    result["speedup_new_bf16_vs_old"] = old / stages["new_bf16"]["step_s"]
    new = trainers["new"]
    result["roofline"] = roofline(new, stages["new"]["step_s"], new.llm_config, quick)
    _print(name, result)
    return result


def _print(name: str, result: dict) -> None:
    print(f"{name}: batch {result['batch_size']}, median seconds per step and per stage")
    print(f"{'variant':<9} {'samples/s':>9} {'step':>7} " + " ".join(f"{s:>9}" for s in STAGES))
    for variant in VARIANTS:
        row = result[variant]
        cells = " ".join(f"{row[s + '_s']:>9.3f}" for s in STAGES)
        print(f"{variant:<9} {row['samples_per_s']:>9.1f} {row['step_s']:>7.3f} {cells}")
    roof = result["roofline"]
    print(
        f"new/old {result['speedup_new_vs_old']:.2f}x, new_bf16/old {result['speedup_new_bf16_vs_old']:.2f}x; "
        f"{roof['step_gflop']:.1f} GFLOP/step at {roof['achieved_gflops']:.1f} GFLOP/s; matmul "
        f"{roof['matmul_shape']}: fp32 {roof['peak_fp32_gflops']:.1f}, bf16 {roof['peak_bf16_gflops']:.1f} GFLOP/s"
    )


def run(quick: bool = False, recipes: tuple[str, ...] = ("finetune", "base")) -> dict:
    """Benchmark the recipes; prints the tables and returns the numbers.

    Args:
        quick: batch 2, a tiny dataset and one timed step per variant (tests; the numbers mean little).
        recipes: which of "finetune" and "base" to run.
    """
    from stamo_vla.vla import build_tiny
    from stamo_vla.vla.tiny import small_config

    unknown = sorted(set(recipes) - {"finetune", "base"})
    if unknown:
        raise ValueError(f"recipes: unknown {unknown}; allowed ['base', 'finetune'].")
    episodes, length = (2, 12) if quick else (8, 40)
    out: dict = {"threads": torch.get_num_threads(), "episodes": episodes, "episode_length": length}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        root = Path(tmp)
        dataset = write_data(root, episodes, length)
        base_dir = str(root / "base")
        build_tiny(save_dir=base_dir, seed=0, config=small_config(), instructions=list(INSTRUCTIONS))
        if "finetune" in recipes:
            batch = 2 if quick else 16
            make = lambda v: finetune_trainer(str(root), dataset, base_dir, v, quick)  # noqa: E731
            out["finetune"] = bench_recipe(
                "finetune (study_small)", make, batch, quick, -(-episodes * length // batch)
            )
        if "base" in recipes:
            batch = 2 if quick else 32
            make = lambda v: base_trainer(str(root), dataset, v, quick)  # noqa: E731
            out["base"] = bench_recipe(
                "base (small, tokens)", make, batch, quick, -(-episodes * length // batch)
            )
    return out
