"""What a training batch holds to learn from, and the check that a run's first steps hold something.

`FinetuneCollator` turns samples into a model batch and adds, under `SUPERVISION`, how many samples carry a
supervised action or a real future frame; the training loop hands those counts to `SupervisionCheck`, which
stops a run whose first steps hold nothing to learn from instead of letting it log loss 0 to the end.
"""

from __future__ import annotations

import logging

import torch

from stamo_vla import keys as K
from stamo_vla.stamo.pixels import uint8_to_pixels

logger = logging.getLogger(__name__)

SUPERVISION = "_supervision"  # batch entry added by FinetuneCollator, popped before the model sees the batch
CHECK_STEPS = 10  # optimizer steps over which a run must show something to learn from


class FinetuneCollator:
    """Samples -> model batch: the policy's batch transform, plus StaMo pixels when targets are computed live.

    Args:
        batch_transform: an `OpenVLABatchTransform`.
        stamo_pixels: add STAMO_PIXELS / FUTURE_STAMO_PIXELS ((B, 3, S, S) float in [0, 1]) from IMAGE /
            FUTURE_IMAGE for the frozen encoder (the target cache makes this unnecessary).
        has_head: the model has a StaMo head (a real future frame is a target).
        horizon: the head's horizon (steps ahead of a future frame).
    """

    def __init__(self, batch_transform, stamo_pixels: bool, has_head: bool = False, horizon: int = 0):
        self.batch_transform = batch_transform
        self.stamo_pixels = stamo_pixels
        self.has_head = has_head
        self.horizon = horizon

    @staticmethod
    def supervision(samples: list[dict], has_head: bool, horizon: int = 0) -> dict[str, int]:
        """Per batch: samples with a supervised action, with a real future frame, and with neither; with a head,
        also the samples whose future frame was clamped to the episode's last frame (``clamped``, fewer than
        `horizon` steps ahead) and the longest episode those show (``longest``: their future step + 1).

        A future frame clamped onto the current one (``FUTURE_STEP == STEP``: the episode ended before the
        horizon) makes a trivial StaMo target (zero motion, the current state).

        Args:
            samples: the batch's samples.
            has_head: the adapter has a StaMo head.
            horizon: the head's horizon (steps to the future frame).
        """
        ahead = [int(s.get(K.FUTURE_STEP, 1)) - int(s.get(K.STEP, 0)) for s in samples]
        clamped = [s for s, a in zip(samples, ahead) if has_head and a < horizon]
        longest = max((int(s[K.FUTURE_STEP]) + 1 for s in clamped if K.FUTURE_STEP in s), default=0)
        actions = sum(bool(s.get(K.HAS_ACTION, True)) for s in samples)
        futures = (
            sum(int(s.get(K.FUTURE_STEP, 1)) != int(s.get(K.STEP, 0)) for s in samples) if has_head else 0
        )
        degenerate = sum(
            not bool(s.get(K.HAS_ACTION, True))
            and not (has_head and int(s.get(K.FUTURE_STEP, 1)) != int(s.get(K.STEP, 0)))
            for s in samples
        )
        counts = {"samples": len(samples), "actions": actions, "targets": futures, "degenerate": degenerate}
        return {**counts, "clamped": len(clamped), "longest": longest}

    def __call__(self, samples: list[dict]) -> dict:
        supervision = self.supervision(samples, self.has_head, self.horizon)
        items = []
        for sample in samples:
            extra = {}
            if self.stamo_pixels:
                extra = {
                    K.STAMO_PIXELS: uint8_to_pixels(sample[K.IMAGE]),
                    K.FUTURE_STAMO_PIXELS: uint8_to_pixels(sample[K.FUTURE_IMAGE]),
                }
            sample = {k: v for k, v in sample.items() if k != K.FUTURE_IMAGE}
            items.append({**self.batch_transform(sample), **extra})
        return {**self.batch_transform.collate(items), SUPERVISION: supervision}


class SupervisionCheck:
    """Fail fast when the first steps hold nothing to learn from; warn when most samples are degenerate.

    Without it, action-free data with no StaMo head, or a horizon longer than every episode, trains for the
    whole run at loss 0 and exits 0. As a loop hook (`stamo_vla.training.loop.Hooks.inspect`) it pops each
    micro-batch's `SUPERVISION` counts, so the model never sees them.

    Args:
        max_steps: the run's optimizer steps (a shorter run is judged at its end).
        has_head: the model has a StaMo head (real future frames are targets).
        horizon: the head's horizon.
        check_steps: optimizer steps after which the counts are judged.
    """

    def __init__(
        self, max_steps: int, has_head: bool = False, horizon: int = 0, check_steps: int = CHECK_STEPS
    ):
        self.has_head, self.horizon, self.steps = has_head, horizon, min(check_steps, max_steps)
        self.totals = {"samples": 0, "actions": 0, "targets": 0, "degenerate": 0, "clamped": 0}
        self.longest = 0  # the longest episode the clamped samples show
        self.seen, self.done = 0, False

    def __call__(self, micro_batches: list[dict], accelerator) -> None:
        """Take the counts out of one optimizer step's micro-batches and judge them once enough steps are seen."""
        self.update([m.pop(SUPERVISION, {}) for m in micro_batches], accelerator)

    def update(self, supervision: list[dict], accelerator) -> None:
        if self.done:
            return
        for counts in supervision:
            for k in self.totals:
                self.totals[k] += int(counts.get(k, 0))
            self.longest = max(self.longest, int(counts.get("longest", 0)))
        self.seen += 1
        if self.seen < self.steps:
            return
        self.done = True
        totals = self.totals
        if accelerator is not None and accelerator.num_processes > 1:
            flat = torch.tensor([float(totals[k]) for k in totals], device=accelerator.device)
            totals = dict(zip(totals, accelerator.reduce(flat, reduction="sum").tolist()))
            self.longest = int(
                accelerator.gather(torch.tensor([self.longest], device=accelerator.device)).max()
            )
        self._judge({k: int(v) for k, v in totals.items()})

    def _judge(self, t: dict) -> None:
        if t["actions"] == 0 and t["targets"] == 0:
            if not self.has_head:
                reason = (
                    "every sample is action-free (NaN actions) and there is no StaMo target (adapter.target=none, "
                    "or base training, which learns from actions only)"
                )
            else:
                reason = (
                    "no sample has an action, and every future frame is clamped onto the current one "
                    f"(adapter.horizon={self.horizon} is longer than the episodes), so the StaMo target is trivial"
                )
            raise ValueError(
                f"nothing to learn from: the first {self.seen} steps ({t['samples']} samples) hold no supervised "
                f"action token and no StaMo target: {reason}. Add labeled data to data.dataset_names, "
                "set adapter.target (state | motion) with StaMo targets, or lower adapter.horizon."
            )
        if self.has_head and t["samples"] and t["clamped"] == t["samples"]:
            raise ValueError(
                f"adapter.horizon={self.horizon} is longer than every episode read: in the first {self.seen} "
                f"steps all {t['samples']} samples had their future frame clamped to their episode's last frame "
                f"(episodes of at most {self.longest} steps), so the head would learn the way to the episode's end, "
                f"not {self.horizon} steps ahead. Set adapter.horizon below {self.longest}, or use longer "
                "episodes."
            )
        if t["degenerate"] > t["samples"] / 2:
            logger.warning(
                "%d of %d samples in the first %d steps are degenerate (no action and no future frame within "
                "adapter.horizon=%d); training learns from the rest only.",
                t["degenerate"],
                t["samples"],
                self.seen,
                self.horizon,
            )
