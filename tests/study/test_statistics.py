"""The study's statistics on synthetic tables with known answers: the run is the unit, never the episode."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("scipy")

from stamo_vla.study import statistics as S  # noqa: E402


def _runs(rates: dict[int, float], n: int = 40) -> dict[int, list[int]]:
    """One run per seed with exactly round(rate * n) successes out of n episodes."""
    return {seed: [1] * round(r * n) + [0] * (n - round(r * n)) for seed, r in rates.items()}


def test_identical_arms_give_an_interval_around_zero_and_a_large_p():
    arm = _runs({0: 0.5, 1: 0.7, 2: 0.3, 3: 0.6})
    boot = S.hierarchical_bootstrap(arm, arm, n_boot=4000)
    assert boot["paired"] and boot["difference"] == 0.0
    assert boot["ci"][0] < 0 < boot["ci"][1]
    perm = S.permutation_test(arm, arm)
    assert perm["p"] == 1.0 and perm["exact"] and perm["arrangements"] == 16


def test_a_large_effect_excludes_zero_and_the_exact_p_is_the_hand_computed_one():
    a = _runs({0: 0.9, 1: 0.8, 2: 0.85, 3: 0.95, 4: 0.9})
    b = _runs({0: 0.1, 1: 0.2, 2: 0.15, 3: 0.05, 4: 0.1})
    boot = S.hierarchical_bootstrap(a, b, n_boot=4000)
    assert boot["difference"] == pytest.approx(0.76) and boot["ci"][0] > 0.6
    # paired: 2^5 sign flips, only all-plus and all-minus reach |mean| = 0.76
    assert S.permutation_test(a, b)["p"] == pytest.approx(2 / 32)
    # unpaired (the arms' seeds differ): C(6, 3) = 20 reassignments, 2 as extreme as the observed split
    b_other_seeds = {s + 10: v for s, v in _runs({0: 0.1, 1: 0.2, 2: 0.0}).items()}
    perm = S.permutation_test(_runs({0: 0.9, 1: 0.8, 2: 1.0}), b_other_seeds)
    assert (
        not perm["paired"]
        and perm["exact"]
        and perm["arrangements"] == 20
        and perm["p"] == pytest.approx(0.1)
    )


def test_paired_permutation_of_mixed_signs_counts_every_arrangement_at_least_as_extreme():
    # per-seed differences +0.2, +0.1, -0.1: |mean| = 0.0667; flips reaching it: (+,+,-)/(-,-,+) give 0.0667,
    # (+,+,+)/(-,-,-) give 0.1333, (+,-,-)/(-,+,+) give 0.0667 -> 6 of 8
    a = _runs({0: 0.6, 1: 0.5, 2: 0.4}, n=10)
    b = _runs({0: 0.4, 1: 0.4, 2: 0.5}, n=10)
    assert S.permutation_test(a, b)["p"] == pytest.approx(6 / 8)


def test_the_bootstrap_resamples_seeds_so_a_seed_spread_widens_the_interval():
    steady = _runs({s: 0.5 for s in range(6)}, n=100)
    spread = _runs({0: 0.0, 1: 1.0, 2: 0.1, 3: 0.9, 4: 0.5, 5: 0.5}, n=100)
    ref = _runs({s: 0.5 for s in range(6)}, n=100)
    narrow = S.hierarchical_bootstrap(steady, ref, n_boot=4000)["ci"]
    wide = S.hierarchical_bootstrap(spread, ref, n_boot=4000)["ci"]
    assert (wide[1] - wide[0]) > 3 * (narrow[1] - narrow[0])


def test_the_mixed_model_recovers_a_known_arm_effect():
    rng = np.random.default_rng(3)
    true_effect, sigma = 1.0, 0.7

    def arm(b: float) -> dict[int, list[int]]:
        return {s: list(rng.random(50) < 1 / (1 + np.exp(-(b + sigma * rng.normal())))) for s in range(40)}

    fit = S.mixed_logistic(arm(-0.3 + true_effect), arm(-0.3))
    assert fit["converged"] and abs(fit["effect"] - true_effect) < 0.35
    assert fit["ci"][0] < true_effect < fit["ci"][1] and fit["ci"][0] > 0
    assert fit["sigma"] == pytest.approx(sigma, abs=0.25)


def test_without_run_spread_the_mixed_model_is_the_logit_difference():
    a, b = _runs({0: 0.8, 1: 0.8, 2: 0.8}, n=50), _runs({0: 0.4, 1: 0.4, 2: 0.4}, n=50)
    fit = S.mixed_logistic(a, b)
    assert fit["effect"] == pytest.approx(math.log(4) - math.log(0.4 / 0.6), abs=0.02)
    assert fit["sigma"] < 0.05  # no spread beyond binomial noise


def test_an_arm_at_zero_in_every_run_gives_no_mixed_model_effect_and_no_nan():
    fit = S.mixed_logistic(_runs({0: 0.0, 1: 0.0, 2: 0.0}), _runs({0: 0.5, 1: 0.4, 2: 0.6}))
    assert fit["effect"] is None and fit["ci"] is None and fit["se"] is None
    assert S.rank_correlation([1.0, 1.0, 1.0], [0.1, 0.5, 0.9]) == {"rho": None, "p": None, "runs": 3}


def test_collapse_rate_has_an_exact_interval_and_fisher_compares_arms():
    plain = _runs({0: 0.6, 1: 0.0, 2: 0.05, 3: 0.5})
    stamo = _runs({0: 0.7, 1: 0.6, 2: 0.65, 3: 0.55})
    c_plain, c_stamo = S.collapse(plain), S.collapse(stamo)
    assert c_plain["collapsed"] == 2 and c_plain["seeds"] == [1, 2] and c_plain["rate"] == 0.5
    assert c_stamo["ci95"] == pytest.approx((0.0, 1 - 0.025 ** (1 / 4)))  # Clopper-Pearson at 0/4
    assert S.collapse_fisher(c_plain, c_stamo) == pytest.approx(6 / 14)  # 2/4 vs 0/4: 3/7


def test_seeds_for_effect_matches_the_textbook_t_test_sizes():
    assert S.seeds_for_effect(sd=0.15, effect=0.15) == 17  # Cohen's d = 1 -> 17 per group
    assert S.seeds_for_effect(sd=0.30, effect=0.15) == 64  # d = 0.5 -> 64 per group
    assert S.seeds_for_effect(sd=0.11, effect=0.15) == 10  # the review's "at least 10"
    assert (
        S.t_test_power(S.seeds_for_effect(0.2), 0.15, 0.2)
        >= 0.8
        > S.t_test_power(S.seeds_for_effect(0.2) - 1, 0.15, 0.2)
    )
    with pytest.raises(ValueError, match="sd=nan"):
        S.seeds_for_effect(float("nan"))


def test_pooled_sd_weights_each_arm_by_its_degrees_of_freedom():
    arms = {"none": _runs({0: 0.2, 1: 0.6}, n=10), "state": _runs({0: 0.5, 1: 0.7, 2: 0.6}, n=10)}
    expected = math.sqrt((np.var([0.2, 0.6], ddof=1) * 1 + np.var([0.5, 0.7, 0.6], ddof=1) * 2) / 3)
    assert S.pooled_sd(arms) == pytest.approx(expected)
    with pytest.raises(ValueError, match="two evaluated runs"):
        S.pooled_sd({"none": _runs({0: 0.5})})


def test_bad_outcomes_name_the_arm_and_seed():
    with pytest.raises(ValueError, match=r"arm 'a' seed 3: episode outcomes must be .* 0/1"):
        S.hierarchical_bootstrap({3: [0, 2]}, {0: [1]})
    with pytest.raises(ValueError, match="arm 'b' has no runs"):
        S.permutation_test({0: [1]}, {})
