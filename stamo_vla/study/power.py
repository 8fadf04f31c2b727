"""The power stage's rule: seeds per arm from the pilot's between-seed spread, within the study's time budget.

Rule (written into ``power.json`` and quoted by the report before any result):

1. From the pilot (the first ``pilot_seeds`` seeds of every primary arm), the between-seed standard deviation of
   standard success, pooled over the primary arms (each arm's sample variance weighted by its degrees of freedom).
2. The seeds per arm: the smallest n >= the pilot's seeds for which a two-sided two-sample t-test on run success
   rates at ``alpha`` detects a difference of ``effect`` with probability ``power`` (noncentral t), at most
   ``max_seeds``.
3. The time left (budget minus every stage's time so far) at the pilot's mean cost per run: primary arms get
   their n seeds first (fewer, equal for every primary arm, when the time does not cover n); the secondary arms
   share what is left, equally, never more than the primary arms' n.
"""

from __future__ import annotations

import math

from stamo_vla.study.statistics import pooled_sd, seeds_for_effect

RULE = (
    "n = the smallest number of seeds per arm (at least the pilot's) for which a two-sided two-sample t-test on run "
    "success rates at alpha={alpha} has power {power} to detect a {effect_points:.0f}-point difference, given the "
    "between-seed standard deviation of standard success pooled over the primary arms' pilot runs; capped at "
    "{max_seeds} seeds and by the time budget (primary arms first, the secondary arms share what is left)."
)


def plan_seeds(pilot: dict[str, dict[int, list[int]]], cfg, spent_s: float, run_cost_s: float) -> dict:
    """The seeds of every arm after the pilot.

    Args:
        pilot: ``{arm: {seed: 0/1 standard outcomes}}`` of the primary arms' pilot runs.
        cfg: the study config (``primary_arms``, ``secondary_arms``, ``pilot_seeds``, ``max_seeds``, ``effect``,
            ``alpha``, ``power``, ``budget_hours``).
        spent_s: seconds every stage has taken so far (summed over calls).
        run_cost_s: mean seconds of one pilot run (fine-tuning, held-out scoring and evaluations).

    Returns:
        The plan: the rule, the estimate, the required n and the seeds given to each arm.
    """
    if not math.isfinite(run_cost_s) or run_cost_s <= 0:
        raise ValueError(
            f"run_cost_s={run_cost_s}: the pilot's cost per run must be a positive number of seconds"
        )
    sd = pooled_sd(pilot)
    required = max(cfg.pilot_seeds, seeds_for_effect(sd, cfg.effect, cfg.alpha, cfg.power, cap=cfg.max_seeds))
    left_s = cfg.budget_hours * 3600 - spent_s
    primary, secondary = list(cfg.primary_arms), list(cfg.secondary_arms)
    affordable = cfg.pilot_seeds + max(0, int(left_s // (run_cost_s * len(primary))))
    n_primary = min(required, affordable)
    left_s -= (n_primary - cfg.pilot_seeds) * len(primary) * run_cost_s
    n_secondary = 0
    if secondary:
        n_secondary = min(n_primary, max(0, int(left_s // (run_cost_s * len(secondary)))))
        left_s -= n_secondary * len(secondary) * run_cost_s
    seeds = {arm: list(range(n_primary)) for arm in primary}
    seeds.update({arm: list(range(n_secondary)) for arm in secondary})
    return {
        "rule": RULE.format(
            alpha=cfg.alpha, power=cfg.power, effect_points=100 * cfg.effect, max_seeds=cfg.max_seeds
        ),
        "pilot_rates": {
            arm: {str(s): sum(v) / len(v) for s, v in runs.items()} for arm, runs in pilot.items()
        },
        "between_seed_sd": sd,
        "effect": cfg.effect,
        "alpha": cfg.alpha,
        "power": cfg.power,
        "required_seeds": required,
        "budget_limited": n_primary < required,
        "budget_s": cfg.budget_hours * 3600,
        "spent_s": spent_s,
        "run_cost_s": run_cost_s,
        "planned_left_s": left_s,
        "seeds": seeds,
    }
