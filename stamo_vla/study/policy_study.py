"""`stamo-vla study`: is StaMo a better auxiliary target than none, than a non-StaMo target, than a random encoder?
A controlled comparison of fine-tuning arms on one base, with seeds sized by power, trained on a 2-core CPU.

    nohup stamo-vla study --config targets > study.log 2>&1 &   # ~16 h on 2 idle cores; rerun the same to resume
    stamo-vla study --config targets --stages '[report]'         # rewrite the report from the run's files
    stamo-vla study --config targets --stages '[reproduce]'      # retrain a collapsed run, compare tensors

Stages (each skipped when finished, each resuming its own work when interrupted; every call records the git commit
it ran from, and the study refuses to mix commits unless ``--allow_mixed_commits true``):

1. collect    scripted demonstrations from *fresh* initial states (never the benchmark's 50 test states; the
              distance of every start to the nearest test state is recorded and checked): the evaluated tasks
              (fine-tuning data), the same tasks again with another seed (the held-out data: ``heldout_episodes``
              per task, so held-out metrics cover every evaluated task) and other tasks of the suite (base data)
2. stamo      a tiny StaMo pretrained on the fine-tuning frames (or ``stamo_path``)
3. base       full-parameter training of the small OpenVLA-architecture policy on the base tasks, token actions:
              the stand-in for openvla-7b
   targets    the target cache of every arm's target kind, for the fine-tuning and the held-out data
4. pilot      the first ``pilot_seeds`` seeds of every primary arm, each a full run: LoRA fine-tuning with the
              L1 chunk head (``--adapter.target <arm>``), held-out action L1 and target loss, the standard
              evaluation and the perturbed one
5. power      the seeds per arm for an ``effect`` difference (`stamo_vla.study.power`), written to power.json
              before any further run starts
6. runs       the remaining runs of power.json: primary arms seed-major, then the secondary arms
7. reproduce  a from-scratch retrain of the first collapsed run, its adapter tensors compared with the first run's
8. report     REPORT.md, study.json, the seed dot plot and curves (`stamo_vla.study.policy_report`)

Evaluation: standard = the upstream protocol on the evaluated tasks (the first ``trials_per_task`` of the 50 fixed
initial states, identical for every run; the suite's step budget, 10 wait steps, success = the env's ``done``);
perturbed = the same tasks in ``perturbed_suites`` (LIBERO-PRO variants), through ``stamo-vla eval --suites``.
Departures from the benchmark, all for CPU cost: cameras rendered at ``env_resolution`` (128 px, the policy sees
112 px) instead of 256 px, in collection and evaluation alike; the policy is a 5M-parameter model of the OpenVLA
architecture; evaluation renders only the steps whose observation the policy reads (``--render policy``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from stamo_vla.configs import parse_config, resolve_preset
from stamo_vla.fileio import append_jsonl, read_json, read_jsonl, write_json_atomic
from stamo_vla.study.policy_study_config import (
    STAGES,
    STAMO_ARMS,
    TARGET_CACHE,
    PolicyStudyConfig,
    arm_parts,
)
from stamo_vla.study.stages import StagedRun, code_version, stamo_vla_cli

POWER_NAME = "power.json"
REPRODUCE_NAME = "reproduce.json"
RUN_TIMES_NAME = "run_times.jsonl"


FINETUNE_DATASET = "finetune"
HELDOUT_DATASET = "heldout"
BASE_DATASET = "base"


class PolicyStudy(StagedRun):
    """Paths and stages of one study directory."""

    STAGES = STAGES
    NAME = "study"

    def __init__(self, cfg: PolicyStudyConfig):
        super().__init__(cfg, cfg.output_dir, cfg.stages)
        self.allow_mixed_commits = cfg.allow_mixed_commits
        # where the inputs of every run live: this study's folder, or the earlier study it reads them from
        self.inputs = Path(cfg.inputs_from) if cfg.inputs_from else self.out
        self.data = self.inputs / "data"
        self.stamo_run = self.inputs / "stamo"
        self.base_run = self.inputs / "base"
        self.finetune_root = self.out / "finetune"
        self.evals = self.out / "eval"
        self.reproduce_root = self.out / "reproduce"

    def dataset(self, kind: str) -> str:
        return f"{self.cfg.suite}_{kind}"

    @staticmethod
    def run_id(arm: str, seed: int) -> str:
        return f"{arm}_seed{seed}"

    def stamo_model(self) -> Path:
        if self.cfg.stamo_path:
            return Path(self.cfg.stamo_path)
        return self.latest_model(self.stamo_run, "stamo")

    def planned_runs(self) -> list[tuple[str, int]]:
        """The pilot's runs, then those of power.json (primary arms seed-major, then the secondary arms)."""
        runs = list(self.cfg.pilot_runs)
        plan = self.power_plan()
        if plan is not None:
            for group in (self.cfg.primary_arms, self.cfg.secondary_arms):
                seeds = sorted({s for arm in group for s in plan["seeds"].get(arm, [])})
                runs += [
                    (a, s)
                    for s in seeds
                    for a in group
                    if s in plan["seeds"].get(a, []) and (a, s) not in runs
                ]
        return runs

    def power_plan(self) -> dict | None:
        path = self.out / POWER_NAME
        return read_json(path, "Delete it and rerun the power stage.") if path.is_file() else None

    # ---------------------------------------------------------------- stages
    def reused(self, stage: str) -> bool:
        """True when `stage`'s output comes from ``inputs_from`` (checked finished there); False: run it here."""
        if not self.cfg.inputs_from:
            return False
        if not (self.inputs / ".stages" / f"{stage}.json").is_file():
            raise FileNotFoundError(
                f"inputs_from={self.cfg.inputs_from}: its {stage} stage has not finished (no "
                f"{self.inputs / '.stages' / (stage + '.json')}); finish that study's {stage} stage first, or leave "
                "inputs_from unset so this study makes its own inputs"
            )
        return True

    def stage_collect(self) -> None:
        if self.reused("collect"):
            return
        c = self.cfg
        for kind, tasks, episodes, seed in (
            (FINETUNE_DATASET, c.eval_task_ids, c.finetune_episodes, c.collect_seed),
            (HELDOUT_DATASET, c.eval_task_ids, c.heldout_episodes, c.collect_seed + 1),
            (BASE_DATASET, c.base_task_ids, c.base_episodes, c.collect_seed),
        ):
            args = ["--suite", c.suite, "--task_ids", _ids(tasks), "--episodes_per_task", str(episodes)]
            args += ["--num_workers", str(c.num_workers), "--seed", str(seed)]
            args += ["--data_root_dir", str(self.data), "--dataset_name", self.dataset(kind)]
            args += ["--init_states", "fresh", "--render_resolution", str(c.env_resolution)]
            self.run(stamo_vla_cli("collect", *args), f"collect_{kind}")

    def stage_stamo(self) -> None:
        import yaml

        c = self.cfg
        if not c.stamo_path and not self.reused("stamo"):  # a given checkpoint needs no pretraining
            preset = yaml.safe_load(resolve_preset(c.stamo_preset, prefix="pretrain_stamo_").read_text())
            preset["source"] = {
                "type": "rlds",
                "data_root_dir": str(self.data),
                "dataset_names": [self.dataset(FINETUNE_DATASET)],
                "cameras": ["image"],
                "frame_stride": 2,
            }
            config = self.out / "pretrain_stamo.yaml"
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(yaml.safe_dump(preset))
            args = ["--config", str(config), "--run_dir", str(self.stamo_run)]
            if c.stamo_steps is not None:
                args += ["--max_steps", str(c.stamo_steps)]
            self.run(stamo_vla_cli("pretrain", *args), "stamo_pretrain")

    def stage_base(self) -> None:
        if self.reused("base"):
            return
        c = self.cfg
        args = ["--model", c.base_model, "--data.data_root_dir", str(self.data)]
        args += ["--data.dataset_names", f"[{self.dataset(BASE_DATASET)}]"]
        args += [
            "--data.image_size",
            "112" if c.base_model == "small" else "224",
            "--data.train_percent",
            "100",
        ]
        args += ["--run_dir", str(self.base_run), "--max_steps", str(c.base_steps)]
        args += ["--batch_size", str(c.base_batch_size), "--save_steps", str(max(1, c.base_steps // 8))]
        args += ["--tokenizer_datasets", f"[{self.dataset(FINETUNE_DATASET)}]"]  # words of every task prompt
        self.run(stamo_vla_cli("train-base", *args), "base")

    def cache_root(self, kind: str) -> Path | None:
        """The target cache root of a cache kind (None: the datasets' default place)."""
        return None if kind == "state" else self.inputs / "target_cache" / kind

    def cache_dir(self, kind: str, dataset: str) -> Path:
        """The target cache of a cache kind for one dataset."""
        from stamo_vla.data.target_cache import default_cache_dir

        root = self.cache_root(kind)
        return default_cache_dir(self.data, dataset) if root is None else root / dataset

    def stage_targets(self) -> None:
        """Every target cache the arms read, of the fine-tuning and the held-out data (after the base: the
        features target is made of the base's frozen backbone). Reused ones must hold every cache the arms read."""
        targets = {arm_parts(a)[0] for a in self.cfg.primary_arms + self.cfg.secondary_arms}
        kinds = sorted({TARGET_CACHE[t] for t in targets if t in TARGET_CACHE})
        if self.reused("targets"):
            self.check_reused_caches(kinds)
            return
        for kind in kinds:
            for dataset in (self.dataset(FINETUNE_DATASET), self.dataset(HELDOUT_DATASET)):
                args = ["--data_root_dir", str(self.data), "--dataset_name", dataset]
                if kind != "state":  # the StaMo-state cache is the command's default target
                    args += ["--target", kind, "--output_dir", str(self.cache_dir(kind, dataset))]
                if kind == "features":
                    args += ["--vla_path", str(self.base_run / "model")]
                else:
                    args += ["--stamo_path", str(self.stamo_model())]
                self.run(stamo_vla_cli("cache-targets", *args), f"cache_{kind}_{dataset}")

    def check_reused_caches(self, kinds: list[str]) -> None:
        """Every target cache of `kinds` exists in ``inputs_from`` (the earlier study may have had other arms)."""
        for kind in kinds:
            for dataset in (self.dataset(FINETUNE_DATASET), self.dataset(HELDOUT_DATASET)):
                where = self.cache_dir(kind, dataset)
                if not where.is_dir():
                    raise FileNotFoundError(
                        f"inputs_from={self.cfg.inputs_from} has no {kind} target cache of {dataset} ({where}): that "
                        f"study had no arm reading it; choose arms whose caches it holds, or leave inputs_from unset"
                    )

    def finetune_args(self, arm: str, seed: int, run_dir: Path | None = None) -> list[str]:
        """The ``stamo-vla finetune`` options of one run (into `run_dir`, default its place in the study).

        Args:
            arm: the run's arm.
            seed: the run's seed.
            run_dir: where the run writes (None: its place in the study).
        """
        c = self.cfg
        target, precision = arm_parts(arm)
        run_dir = run_dir or self.finetune_root / self.run_id(arm, seed)
        args = ["--config", c.finetune_preset]
        args += ["--vla_path", str(self.base_run / "model"), "--data.data_root_dir", str(self.data)]
        args += ["--data.dataset_names", f"[{self.dataset(FINETUNE_DATASET)}]", "--data.train_percent", "100"]
        args += ["--run_dir", str(run_dir), "--seed", str(seed), "--data.seed", str(seed)]
        args += ["--max_steps", str(c.finetune_steps), "--batch_size", str(c.finetune_batch_size)]
        args += [
            "--save_steps",
            str(max(1, c.finetune_steps // 5)),
            "--adapter.target",
            target,
            "--resume",
            "true",
        ]
        if precision is not None:
            args += ["--mixed_precision", precision]
        if target in TARGET_CACHE:
            args += ["--data.use_target_cache", "true"]
            root = self.cache_root(TARGET_CACHE[target])
            args += [] if root is None else ["--data.target_cache_root", str(root)]
        if target in STAMO_ARMS:
            args += ["--stamo_path", str(self.stamo_model())]
        return args

    def eval_args(self, arm: str, seed: int, suites: list[str], output_dir: Path) -> list[str]:
        """The ``stamo-vla eval`` options of one run on `suites` (the evaluated tasks of each).

        Args:
            arm: the run's arm.
            seed: the run's seed.
            suites: the suites evaluated.
            output_dir: where the evaluation writes.
        """
        c = self.cfg
        args = ["--policy.type", "adapter", "--policy.checkpoint", str(self.base_run / "model")]
        args += ["--policy.adapter_dir", str(self.finetune_root / self.run_id(arm, seed) / "adapter")]
        args += ["--policy.unnorm_key", self.dataset(FINETUNE_DATASET)]
        args += ["--suites", "[" + ",".join(suites) + "]"]
        args += ["--task_ids", _ids(c.eval_task_ids)]
        args += ["--num_trials_per_task", str(c.trials_per_task), "--num_workers", str(c.num_workers)]
        args += ["--env_resolution", str(c.env_resolution), "--center_crop", "false"]
        args += ["--video", "failures", "--render", "policy", "--progress", "false"]
        return args + ["--output_dir", str(output_dir)]

    def run_steps(self, arm: str, seed: int) -> list[tuple[str, Path, list[str]]]:
        """The steps of one run as (name, the file that marks it done, command)."""
        name = self.run_id(arm, seed)
        run = self.finetune_root / name
        heldout = ["--run_dir", str(run), "--dataset_name", self.dataset(HELDOUT_DATASET)]
        steps = [
            ("finetune", run / "adapter", stamo_vla_cli("finetune", *self.finetune_args(arm, seed))),
            ("heldout", run / "heldout_metrics.json", stamo_vla_cli("heldout", *heldout)),
        ]
        standard = self.evals / name / "standard"
        steps.append(
            (
                "eval",
                standard / "summary.json",
                stamo_vla_cli("eval", *self.eval_args(arm, seed, [self.cfg.suite], standard)),
            )
        )
        if self.cfg.perturbed_suites:
            out = self.evals / name / "perturbed"
            args = self.eval_args(arm, seed, self.cfg.perturbed_suites, out)
            steps.append(("eval_perturbed", out / "summary.json", stamo_vla_cli("eval", *args)))
        return steps

    def run_one(self, arm: str, seed: int) -> None:
        """Every step of one run that has not finished; each step's wall time and commit appended to
        run_times.jsonl (the power stage's cost per run). A step is refused (`MixedCommitsError`) when the code
        changed since the study's earlier stage calls, unless ``allow_mixed_commits``."""
        name = self.run_id(arm, seed)
        for step, done, command in self.run_steps(arm, seed):
            if done.exists():
                continue
            code = (
                code_version()
            )  # the step's command imports the code on disk now: it must still be the study's
            self.check_commit(step, code)
            start = time.perf_counter()
            self.run(command, f"{step}_{name}")
            seconds = round(time.perf_counter() - start, 1)
            append_jsonl(self.out / RUN_TIMES_NAME, {"run": name, "step": step, "seconds": seconds, **code})

    def run_seconds(self) -> dict[str, float]:
        """Seconds of every run, summed over its steps and calls."""
        totals: dict[str, float] = {}
        for r in read_jsonl(self.out / RUN_TIMES_NAME):
            totals[r["run"]] = totals.get(r["run"], 0.0) + r["seconds"]
        return totals

    def stage_pilot(self) -> None:
        for arm, seed in self.cfg.pilot_runs:
            self.run_one(arm, seed)

    def stage_power(self) -> None:
        from stamo_vla.study.policy_report import stage_times, standard_outcomes
        from stamo_vla.study.power import plan_seeds

        pilot = {arm: {} for arm in self.cfg.primary_arms}
        for arm, seed in self.cfg.pilot_runs:
            outcomes = standard_outcomes(self, arm, seed)
            if outcomes is None:
                raise FileNotFoundError(
                    f"{self.run_id(arm, seed)} has no standard evaluation; run the pilot stage"
                )
            pilot[arm][seed] = outcomes
        seconds = self.run_seconds()
        costs = [seconds[self.run_id(a, s)] for a, s in self.cfg.pilot_runs if self.run_id(a, s) in seconds]
        if not costs:
            raise FileNotFoundError(
                f"{self.out / RUN_TIMES_NAME} holds no pilot run time; run the pilot stage"
            )
        spent = sum(t["seconds"] for name, t in stage_times(self).items() if name != "power")
        plan = plan_seeds(pilot, self.cfg, spent, sum(costs) / len(costs))
        write_json_atomic(
            self.out / POWER_NAME, {**plan, "written": time.strftime("%Y-%m-%d %H:%M:%S"), **code_version()}
        )
        print(
            f"[study] power: {plan['required_seeds']} seeds per arm required; seeds given: "
            + ", ".join(f"{a} {len(s)}" for a, s in plan["seeds"].items()),
            flush=True,
        )

    def stage_runs(self) -> None:
        if self.power_plan() is None:
            raise FileNotFoundError(
                f"{self.out / POWER_NAME} is missing; run the power stage before the runs stage"
            )
        for arm, seed in self.planned_runs():
            self.run_one(arm, seed)

    def stage_reproduce(self) -> None:
        from stamo_vla.study.policy_report import standard_outcomes
        from stamo_vla.study.reproduce import compare_adapters

        collapsed = []
        for arm, seed in self.planned_runs():
            outcomes = standard_outcomes(self, arm, seed)
            if outcomes is not None and sum(outcomes) / len(outcomes) < self.cfg.collapse_threshold:
                collapsed.append((arm, seed))
        result: dict = {"run": None, "reason": "no evaluated run collapsed"}
        if collapsed:
            arm, seed = collapsed[0]
            again = self.reproduce_root / self.run_id(arm, seed)
            if not (again / "adapter").is_dir():
                args = self.finetune_args(arm, seed, run_dir=again)
                self.run(stamo_vla_cli("finetune", *args), f"reproduce_{self.run_id(arm, seed)}")
            first = self.finetune_root / self.run_id(arm, seed) / "adapter"
            result = {"run": self.run_id(arm, seed), **compare_adapters(first, again / "adapter")}
        write_json_atomic(self.out / REPRODUCE_NAME, result)

    def stage_report(self) -> None:
        from stamo_vla.study.policy_report import write_report

        write_report(self)


def _ids(values: list[int]) -> str:
    """A list of integers as one draccus value: ``[0,1]``."""
    return "[" + ",".join(map(str, values)) + "]"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    cfg = parse_config(PolicyStudyConfig, args, prefix="study_")
    study = PolicyStudy(cfg)
    if set(cfg.stages) - {"report"}:  # rewriting the report is not a run of the study
        study.record_command(["stamo-vla", "study", *args])
    times = study.main()
    print("\n[study] stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    print(f"[study] report: {Path(cfg.output_dir) / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
