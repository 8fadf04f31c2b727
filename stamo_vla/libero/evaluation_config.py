"""`EvalConfig`: every knob of a LIBERO evaluation, validated, with upstream OpenVLA defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from stamo_vla.configs import check_choice, check_positive_int
from stamo_vla.fileio import check_apart
from stamo_vla.libero.evaluation_policies import DEFAULT_POLICY, PolicyConfig
from stamo_vla.libero.suites import SUITE_MAX_STEPS, resolve_suite
from stamo_vla.provenance import LEGACY_FILE, PROVENANCE_NAME, read_provenance

VIDEO_MODES = ("all", "failures", "none")
RENDER_MODES = ("all", "policy")
# upstream default trials per task (50 fixed init states ship with each LIBERO task)
NUM_INIT_STATES = 50
# steps after which a LIBERO env refuses to step (robosuite `horizon` of OffScreenRenderEnv)
LIBERO_HORIZON = 1000
# the policy fields of configs written before the policy was a registered choice (all flat in EvalConfig)
LEGACY_POLICY_FIELDS = (
    "checkpoint",
    "adapter_dir",
    "unnorm_key",
    "dtype",
    "quantization",
    "attn_implementation",
    "device",
    "future_video_stamo",
    "future_video_sample_steps",
)

# the fields of those that the checkpoint kind has (the rest belong to the adapter kind)
CHECKPOINT_FIELDS = ("checkpoint", "unnorm_key", "dtype", "quantization", "attn_implementation", "device")


def default_policy() -> PolicyConfig:
    """A fresh config of the default kind (``checkpoint``, registered by `stamo_vla.evaluation`)."""
    known = PolicyConfig.get_known_choices()
    if DEFAULT_POLICY not in known:
        raise ValueError(
            f"policy: the default kind {DEFAULT_POLICY!r} is registered by stamo_vla.evaluation; import it (or "
            f"use EvalConfig from there), or pass policy= one of {sorted(known)}"
        )
    return known[DEFAULT_POLICY]()


def standard_suites() -> tuple[str, ...]:
    """The five LIBERO suites of the OpenVLA protocol (keys of the per-suite step budgets)."""
    return tuple(SUITE_MAX_STEPS)


@dataclasses.dataclass
class EvalConfig:
    """LIBERO evaluation (upstream OpenVLA protocol, batched over parallel env workers, resumable)."""

    # what runs, a registered choice (--policy.type; its fields are --policy.<field>): "checkpoint" (default: our
    # OpenVLA-compatible model, merged or upstream, --policy.checkpoint DIR), "adapter" (a StaMo/LoRA adapter on a
    # base model: --policy.checkpoint BASE --policy.adapter_dir DIR), "oft" (a released OpenVLA-OFT directory),
    # "scripted" (the privileged-state oracle). The model kinds also take unnorm_key, dtype, quantization,
    # attn_implementation and device (see `stamo_vla.evaluation`).
    policy: PolicyConfig = dataclasses.field(default_factory=default_policy)
    # chunked policies: execute the first n of the K returned actions before querying again (None = all K)
    open_loop_steps: int | None = None

    # suites to run, in order: libero_spatial, libero_object, libero_goal, libero_10, libero_90, or any suite the
    # installed benchmark registers that perturbs one of them (LIBERO-PRO: libero_spatial_swap, libero_goal_lan, ...)
    suites: list[str] = dataclasses.field(default_factory=lambda: ["libero_spatial"])
    # subset of task ids, applied to every suite (None = all tasks of the suite)
    task_ids: list[int] | None = None
    # trials per task; trial i uses the task's fixed initial state i (upstream: 50)
    num_trials_per_task: int = 50
    # global seed for torch / numpy / random / PYTHONHASHSEED (upstream: 7)
    seed: int = 7
    # steps of the dummy action at episode start while objects settle (upstream: 10)
    num_steps_wait: int = 10
    # policy-step budget per episode; None = the suite's upstream value (220/280/300/520/400; a perturbed suite
    # gets the value of the suite it perturbs)
    max_steps: int | None = None
    # center crop keeping 90 percent of the policy image's area; None = crop exactly when the checkpoint records
    # that training used image augmentation (trained_with_image_aug in the adapter's provenance.json, or in the
    # stamo_adapter_config.json of an adapter saved before provenance had its own file); crop for an upstream
    # checkpoint (no stamo_adapter_config.json: all trained with augmentation, upstream's default); a directory
    # of ours that records nothing (provenance.json deleted) is refused: pass true or false
    center_crop: bool | None = None
    # camera resolution of the simulator before the 224 px resize (upstream: 256)
    env_resolution: int = 256
    # which env steps render the cameras: "all" (upstream) or "policy", only the steps whose observation the
    # policy reads (one in K for a chunked policy run open loop). Outcomes are identical (the physics and the frames
    # the policy sees do not change); rendering dominates a CPU step, so chunked policies evaluate several times
    # faster. Videos then hold one frame per policy query, played at video_fps / K.
    render: str = "all"

    # parallel simulator worker processes (one env each); episodes are batched across them
    num_workers: int = 1
    # rollout videos of the preprocessed 224 px frames: "all", "failures" or "none"
    video: str = "failures"
    # frames per second of the rollout videos (upstream: 30)
    video_fps: int = 30
    # directory for results, summary, config, environment and videos; a rerun here resumes
    output_dir: str = "runs/eval/libero"
    # allow continuing an output_dir that already holds results (False: refuse instead of mixing runs)
    resume: bool = True
    # show a tqdm progress bar with the running success rate
    progress: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.policy, PolicyConfig):
            raise ValueError(
                f"policy={self.policy!r} is not valid; the policy is a registered choice: pass a PolicyConfig, on "
                f"the command line --policy.type with one of {sorted(PolicyConfig.get_known_choices())}"
            )
        # results only add files under output_dir (never replace it), so <model>/eval or the run folder that holds
        # the adapter is fine; the model folder itself is not
        check_apart({"output_dir": self.output_dir}, self.policy.input_dirs(), additive=True)
        check_choice("video", self.video, VIDEO_MODES)
        check_choice("render", self.render, RENDER_MODES)
        self._check_suites()
        check_positive_int("num_trials_per_task", self.num_trials_per_task)
        if self.num_trials_per_task > NUM_INIT_STATES:
            raise ValueError(
                f"num_trials_per_task={self.num_trials_per_task}: LIBERO ships {NUM_INIT_STATES} fixed initial "
                f"states per task; use at most {NUM_INIT_STATES}"
            )
        if self.num_steps_wait < 0:
            raise ValueError(f"num_steps_wait={self.num_steps_wait} must be >= 0 (upstream: 10)")
        if self.max_steps is not None:
            check_positive_int("max_steps", self.max_steps)
            if self.max_steps + self.num_steps_wait > LIBERO_HORIZON:
                # past the horizon LIBERO raises "executing action in terminated episode" mid-episode
                raise ValueError(
                    f"max_steps={self.max_steps} plus num_steps_wait={self.num_steps_wait} exceeds the LIBERO "
                    f"env horizon of {LIBERO_HORIZON} steps; use max_steps <= {LIBERO_HORIZON - self.num_steps_wait}"
                )
        if self.open_loop_steps is not None:
            check_positive_int("open_loop_steps", self.open_loop_steps)
        check_positive_int("num_workers", self.num_workers)
        check_positive_int("video_fps", self.video_fps)
        check_positive_int("env_resolution", self.env_resolution)
        self.policy.check_settings(self)

    def _check_suites(self) -> None:
        if isinstance(self.suites, str):
            self.suites = [self.suites]
        valid = standard_suites()
        if not self.suites:
            raise ValueError(f"suites is empty; pass one or more of {list(valid)}")
        for suite in self.suites:
            if suite not in valid:
                check_benchmark_suite(suite)
        if len(set(self.suites)) != len(self.suites):
            raise ValueError(f"suites={self.suites} lists a suite twice; list each suite once")
        if self.task_ids is not None and (not self.task_ids or min(self.task_ids) < 0):
            raise ValueError(
                f"task_ids={self.task_ids} must be None (all tasks) or non-negative task indices"
            )

    @classmethod
    def upgrade_saved(cls, data: dict, config_dir: str | Path | None = None) -> dict:
        """An eval config dict (YAML) written before the policy was a registered choice, with its flat policy
        fields (``policy: openvla``, ``checkpoint``, ``adapter_dir``, ...) moved into ``policy``: ``scripted``,
        else ``adapter`` when it names an adapter, else ``checkpoint`` (a new dict; current dicts pass unchanged).
        """
        if isinstance(data.get("policy"), dict) or not (
            "policy" in data or any(k in data for k in LEGACY_POLICY_FIELDS)
        ):
            return data
        old = data.get("policy", "openvla")
        flat = {k: data[k] for k in LEGACY_POLICY_FIELDS if k in data}
        data = {k: v for k, v in data.items() if k not in LEGACY_POLICY_FIELDS}
        if old == "scripted":
            data["policy"] = {"type": "scripted"}
            return data
        if old != "openvla":
            raise ValueError(
                f"policy={old!r} is not valid; allowed in a config of this layout: ['openvla', 'scripted']"
            )
        if flat.get("adapter_dir") is None:
            flat = {k: v for k, v in flat.items() if k in CHECKPOINT_FIELDS}
            data["policy"] = {"type": DEFAULT_POLICY, **flat}
        else:
            data["policy"] = {"type": "adapter", **flat}
        return data

    def resolve_center_crop(self) -> bool:
        """Fix `center_crop` (explicit value wins, else the policy's record, else True for an upstream
        checkpoint and for a policy without a model) and return it.

        Raises:
            ValueError: `center_crop` is None and a directory written by stamo_vla records no
                ``trained_with_image_aug`` (its provenance.json was removed): the crop it needs is unknown.
        """
        if self.center_crop is None:
            directory = self.policy.provenance_dir()
            recorded = recorded_image_aug(directory)
            if recorded is None and directory and (Path(directory) / LEGACY_FILE).is_file():
                raise ValueError(
                    f"center_crop: {directory} records no trained_with_image_aug ({PROVENANCE_NAME} is missing "
                    "or leaves it null), so whether its training images were augmented is unknown. Pass "
                    "--center_crop true (trained with data.image_aug true) or --center_crop false, or copy "
                    f"{PROVENANCE_NAME} back from the run that wrote it."
                )
            self.center_crop = True if recorded is None else recorded
        return self.center_crop

    def max_steps_for(self, suite: str) -> int:
        """The policy-step budget for `suite`: the override, else the upstream per-suite value."""
        return self.max_steps if self.max_steps is not None else resolve_suite(suite).max_steps


def check_moved_flags(args: list[str]) -> None:
    """Raise a ValueError naming the new spelling of a flag from before the policy was a registered choice
    (``--checkpoint DIR`` is now ``--policy.checkpoint DIR``, ``--policy scripted`` is ``--policy.type scripted``).
    """
    for arg in args:
        flag, _, value = arg.partition("=")
        name = flag[2:] if flag.startswith("--") else None
        following = value or (args[args.index(arg) + 1] if arg != args[-1] else "")
        if name == "policy" and following in ("openvla", "scripted"):  # (--policy FILE.yaml loads the choice)
            kind = "scripted" if following == "scripted" else f"{DEFAULT_POLICY} (or adapter, oft)"
            raise ValueError(
                f"--policy {following} is now --policy.type {kind}: the policy is a registered choice whose "
                "loading options are --policy.<field> (see --help)"
            )
        if name in LEGACY_POLICY_FIELDS:
            new = f"--policy.{name}"
            if name not in CHECKPOINT_FIELDS:
                new = f"--policy.type adapter {new}"
            raise ValueError(
                f"{flag} is now {new}: the loading options belong to the policy kind (--policy.type "
                f"{DEFAULT_POLICY} | adapter | oft | scripted; see --help)"
            )


def check_benchmark_suite(suite: str) -> None:
    """Raise ValueError unless the installed benchmark registers `suite` as a perturbation of a base suite.

    Imports the benchmark's task registry (no simulator, no renderer); only names outside the five base suites
    get here.
    """
    from stamo_vla.libero.env import check_suite
    from stamo_vla.optional import MissingDependencyError

    try:
        check_suite(suite, field="suites")
    except MissingDependencyError as err:
        raise ValueError(
            f"suites: {suite!r} is none of the base suites {list(standard_suites())}, and the LIBERO benchmark "
            f"that would define it is not installed ({err})"
        ) from err


def recorded_image_aug(directory: str | None) -> bool | None:
    """``trained_with_image_aug`` of an adapter / merged checkpoint directory (None when not recorded)."""
    if not directory:
        return None
    return read_provenance(directory).trained_with_image_aug
