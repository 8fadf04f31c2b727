"""Statistics of a seeded policy study, with the training run as the unit of replication.

A run (one arm, one seed) is evaluated on many episodes, but episodes of one run share its weights: between-seed
spread is typically many times the evaluation noise of one run. So nothing here pools episodes of different runs
into one interval. Every comparison of two arms is made on per-run success rates:

- `hierarchical_bootstrap`: resample seeds, then episodes within each resampled run; the 95% percentile interval
  of the difference of the arms' mean run success (paired by seed when both arms have exactly the same seeds).
- `permutation_test`: the exact permutation test over seeds (sign flips of per-seed differences when paired,
  reassignment of runs to arms otherwise); Monte Carlo only above ``EXACT_LIMIT`` arrangements, and it says so.
- `mixed_logistic`: a logistic model of every episode with a random intercept per run, fitted by maximum
  likelihood with adaptive Gauss-Hermite quadrature; the arm effect in logits with its Wald 95% interval.
- `collapse`: runs below a success threshold, per arm, with a Clopper-Pearson interval and Fisher's exact test.
- `seeds_for_effect`: the seeds per arm that detect a given difference of mean run success with a two-sided
  two-sample t-test at the given alpha and power (noncentral t), from the between-seed standard deviation.

An arm's data is ``{seed: outcomes}``, outcomes a sequence of 0/1 episode successes. scipy is needed
(``pip install stamo-vla[study]``); it is imported inside the functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np

from stamo_vla.libero.results import wilson_interval

Arm = Mapping[int, Sequence[int]]
# above this many arrangements the permutation test samples MONTE_CARLO of them instead of enumerating
EXACT_LIMIT = 2**20
MONTE_CARLO = 200_000
GH_NODES = 20


def _scipy(name: str):
    from stamo_vla.optional import require

    require("scipy", "the study's statistics")
    import importlib

    return importlib.import_module(f"scipy.{name}")


def _outcomes(arm: Arm, label: str) -> dict[int, np.ndarray]:
    """Validated 0/1 arrays per seed; an error names the arm and seed that hold something else."""
    if not arm:
        raise ValueError(f"arm {label!r} has no runs; every compared arm needs at least one evaluated run")
    out = {}
    for seed, values in arm.items():
        a = np.asarray(values, dtype=float)
        if a.ndim != 1 or a.size == 0 or not np.isin(a, (0.0, 1.0)).all():
            raise ValueError(
                f"arm {label!r} seed {seed}: episode outcomes must be a non-empty list of 0/1, got {list(values)[:8]}"
            )
        out[int(seed)] = a
    return out


def run_summary(outcomes: Sequence[int]) -> dict:
    """Successes, episodes, success rate and the Wilson 95% interval of one run (never of several runs)."""
    a = np.asarray(outcomes, dtype=int)
    k, n = int(a.sum()), int(a.size)
    return {
        "successes": k,
        "episodes": n,
        "success_rate": k / n if n else float("nan"),
        "ci95": wilson_interval(k, n),
    }


def is_paired(a: Arm, b: Arm) -> bool:
    """Whether two arms have exactly the same seeds (then seed k of one is compared with seed k of the other)."""
    return set(a) == set(b)


def _draw_means(runs: dict[int, np.ndarray], idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per replicate (a row of `idx`: drawn runs), the mean success of the drawn runs, each run's episodes
    resampled with replacement (a binomial draw at the run's own rate: the same distribution)."""
    seeds = sorted(runs)
    n = np.array([runs[s].size for s in seeds])
    p = np.array([runs[s].mean() for s in seeds])
    return (rng.binomial(n[idx], p[idx]) / n[idx]).mean(axis=1)


def arm_bootstrap(arm: Arm, n_boot: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean run success of one arm with the percentile interval of the two-level bootstrap (seeds, then
    episodes within each drawn run).

    Args:
        arm: the arm.
        n_boot: bootstrap resamples.
        seed: seeds the resampling.
        level: the interval's confidence level.
    """
    runs = _outcomes(arm, "arm")
    rng = np.random.default_rng(seed)
    means = _draw_means(runs, rng.integers(0, len(runs), size=(n_boot, len(runs))), rng)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return {
        "mean": float(np.mean([v.mean() for v in runs.values()])),
        "ci": (float(low), float(high)),
        "runs": len(runs),
    }


def hierarchical_bootstrap(a: Arm, b: Arm, n_boot: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """Difference of mean run success (a - b) with a percentile interval from a two-level bootstrap.

    Each replicate draws seeds with replacement (jointly for both arms when they are paired), then, for every
    drawn run, as many episodes with replacement as the run has (a binomial draw at the run's own success rate,
    which is the same distribution); an arm's value is the mean over its drawn runs.

    Args:
        a: first arm, ``{seed: 0/1 outcomes}``.
        b: second arm.
        n_boot: bootstrap replicates.
        seed: seed of the resampling.
        level: interval coverage.

    Returns:
        ``{"difference", "ci", "paired", "replicates"}``; difference and interval in success-rate units.
    """
    oa, ob = _outcomes(a, "a"), _outcomes(b, "b")
    rng = np.random.default_rng(seed)
    paired = is_paired(oa, ob)
    idx_a = rng.integers(0, len(oa), size=(n_boot, len(oa)))
    idx_b = idx_a if paired else rng.integers(0, len(ob), size=(n_boot, len(ob)))
    diffs = _draw_means(oa, idx_a, rng) - _draw_means(ob, idx_b, rng)
    tail = (1 - level) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    observed = np.mean([v.mean() for v in oa.values()]) - np.mean([v.mean() for v in ob.values()])
    return {
        "difference": float(observed),
        "ci": (float(low), float(high)),
        "paired": paired,
        "replicates": n_boot,
    }


def permutation_test(a: Arm, b: Arm, seed: int = 0) -> dict:
    """Two-sided permutation test of mean run success over seeds.

    Paired (the arms have the same seeds): every sign flip of the per-seed differences. Unpaired: every
    reassignment of the runs to the two arms with the arms' sizes. The statistic is |mean difference|; p counts
    the arrangements at least as extreme as the observed one (the observed one included).

    Args:
        a: the first arm.
        b: the second arm.
        seed: seeds the sampled arrangements when there are too many to enumerate.

    Returns:
        ``{"p", "paired", "exact", "arrangements"}``.
    """
    oa, ob = _outcomes(a, "a"), _outcomes(b, "b")
    paired = is_paired(oa, ob)
    ra = np.array([oa[s].mean() for s in sorted(oa)])
    rb = np.array([ob[s].mean() for s in sorted(ob)])
    rng = np.random.default_rng(seed)
    if paired:
        d = ra - rb
        total = 2 ** len(d)
        exact = total <= EXACT_LIMIT
        if exact:
            signs = 1 - 2 * ((np.arange(total)[:, None] >> np.arange(len(d))) & 1)
        else:
            signs = rng.choice([-1, 1], size=(MONTE_CARLO, len(d)))
        stats = np.abs((signs * d).mean(axis=1))
        observed = abs(d.mean())
    else:
        pooled = np.concatenate([ra, rb])
        total = math.comb(len(pooled), len(ra))
        exact = total <= EXACT_LIMIT
        if exact:
            groups = np.array(list(combinations(range(len(pooled)), len(ra))))
        else:
            groups = np.argsort(rng.random((MONTE_CARLO, len(pooled))), axis=1)[:, : len(ra)]
        in_a = np.zeros((len(groups), len(pooled)), dtype=bool)
        np.put_along_axis(in_a, groups, True, axis=1)
        mean_a = (in_a * pooled).sum(axis=1) / len(ra)
        mean_b = (~in_a * pooled).sum(axis=1) / len(rb)
        stats = np.abs(mean_a - mean_b)
        observed = abs(ra.mean() - rb.mean())
    hits = int((stats >= observed - 1e-12).sum())
    p = hits / len(stats) if exact else (hits + 1) / (len(stats) + 1)
    return {"p": float(p), "paired": paired, "exact": exact, "arrangements": int(len(stats))}


def _run_log_likelihood(eta0: np.ndarray, sigma: float, k: np.ndarray, n: np.ndarray) -> np.ndarray:
    """log ∫ Binomial(k | n, sigmoid(eta0 + sigma z)) N(z) dz per run (binomial coefficient left out), by adaptive
    Gauss-Hermite quadrature centred on each run's mode."""
    from scipy.special import expit

    z = np.zeros_like(eta0)
    for _ in range(30):  # Newton on the concave log integrand
        p = expit(eta0 + sigma * z)
        grad = sigma * (k - n * p) - z
        hess = -(sigma**2) * n * p * (1 - p) - 1
        z = z - grad / hess
    p = expit(eta0 + sigma * z)
    scale = 1 / np.sqrt(sigma**2 * n * p * (1 - p) + 1)
    x, w = np.polynomial.hermite.hermgauss(GH_NODES)
    zz = z[:, None] + math.sqrt(2) * scale[:, None] * x[None, :]
    eta = eta0[:, None] + sigma * zz
    log_f = k[:, None] * eta - n[:, None] * np.logaddexp(0, eta) - zz**2 / 2
    terms = log_f + x[None, :] ** 2 + np.log(w)[None, :]
    peak = terms.max(axis=1, keepdims=True)
    log_int = peak[:, 0] + np.log(np.exp(terms - peak).sum(axis=1))
    return log_int + np.log(math.sqrt(2) * scale) - 0.5 * math.log(2 * math.pi)


def _hessian(f, x: np.ndarray, h: float = 1e-4) -> np.ndarray:
    """Central-difference Hessian of a scalar function."""
    d = len(x)
    out = np.zeros((d, d))
    for i in range(d):
        for j in range(d):
            ei, ej = np.eye(d)[i] * h, np.eye(d)[j] * h
            out[i, j] = (f(x + ei + ej) - f(x + ei - ej) - f(x - ei + ej) + f(x - ei - ej)) / (4 * h * h)
    return out


def mixed_logistic(a: Arm, b: Arm) -> dict:
    """Logistic model with a random intercept per run: logit P(success) = b0 + b1 [run in arm a] + u_run,
    u_run ~ N(0, sigma^2); maximum likelihood over (b0, b1, log sigma).

    Returns:
        ``{"effect", "ci", "se", "sigma", "converged"}``: effect = b1 in logits (a relative to b) with its Wald
        95% interval from the observed information; effect, se and ci are None when the effect is not identified
        (the information is not positive definite, or the effect runs to its bound: an arm at 0% or 100% in
        every run); `converged` says whether the optimizer stopped cleanly.
    """
    optimize = _scipy("optimize")
    oa, ob = _outcomes(a, "a"), _outcomes(b, "b")
    runs = [(1.0, v) for v in oa.values()] + [(0.0, v) for v in ob.values()]
    x = np.array([r[0] for r in runs])
    k = np.array([r[1].sum() for r in runs])
    n = np.array([float(r[1].size) for r in runs])

    def nll(theta: np.ndarray) -> float:
        b0, b1, log_sigma = theta
        return -float(_run_log_likelihood(b0 + b1 * x, math.exp(log_sigma), k, n).sum())

    rate = np.clip(k.sum() / n.sum(), 1e-3, 1 - 1e-3)
    start = np.array([math.log(rate / (1 - rate)), 0.0, 0.0])
    bounds = [(-20, 20), (-20, 20), (-7, 3)]
    fit = optimize.minimize(nll, start, method="L-BFGS-B", bounds=bounds)
    se = None
    hess = _hessian(nll, fit.x)
    if np.all(np.isfinite(hess)) and np.linalg.eigvalsh(hess).min() > 0:
        se = float(math.sqrt(np.linalg.inv(hess)[1, 1]))
    effect = float(fit.x[1])
    separated = any(k[x == g].sum() in (0, n[x == g].sum()) for g in (0.0, 1.0))  # an arm all 0% or all 100%
    if separated or se is None or abs(effect) >= bounds[1][1] - 1e-3:  # the effect is not identified
        effect, se = None, None
    return {
        "effect": effect,
        "se": se,
        "ci": None if se is None else (effect - 1.959964 * se, effect + 1.959964 * se),
        "sigma": float(math.exp(fit.x[2])),
        "converged": bool(fit.success),
    }


def collapse(arm: Arm, threshold: float = 0.10) -> dict:
    """Runs whose success rate is below `threshold`: count, runs, rate and its Clopper-Pearson 95% interval."""
    stats = _scipy("stats")
    runs = _outcomes(arm, "arm")
    collapsed = sorted(s for s, v in runs.items() if v.mean() < threshold)
    ci = stats.binomtest(len(collapsed), len(runs)).proportion_ci(method="exact")
    return {
        "collapsed": len(collapsed),
        "runs": len(runs),
        "rate": len(collapsed) / len(runs),
        "ci95": (float(ci.low), float(ci.high)),
        "seeds": collapsed,
    }


def collapse_fisher(a: dict, b: dict) -> float:
    """Two-sided Fisher exact p of the collapse counts of two arms (results of `collapse`)."""
    stats = _scipy("stats")
    table = [[a["collapsed"], a["runs"] - a["collapsed"]], [b["collapsed"], b["runs"] - b["collapsed"]]]
    return float(stats.fisher_exact(table).pvalue)


def compare(a: Arm, b: Arm, n_boot: int = 10_000, seed: int = 0) -> dict:
    """The bootstrap, the permutation test and the mixed model of arm a against arm b.

    Args:
        a: the first arm.
        b: the second arm.
        n_boot: bootstrap resamples.
        seed: seeds the resampling and the permutation test.
    """
    return {
        "bootstrap": hierarchical_bootstrap(a, b, n_boot=n_boot, seed=seed),
        "permutation": permutation_test(a, b, seed=seed),
        "mixed_model": mixed_logistic(a, b),
    }


def t_test_power(n: int, effect: float, sd: float, alpha: float = 0.05) -> float:
    """Power of the two-sided two-sample t-test with n runs per arm (noncentral t).

    Args:
        n: runs per arm.
        effect: the true difference in mean success.
        sd: the standard deviation of a run's success.
        alpha: the significance level.
    """
    stats = _scipy("stats")
    df = 2 * n - 2
    nc = effect / (sd * math.sqrt(2 / n))
    crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def seeds_for_effect(
    sd: float, effect: float = 0.15, alpha: float = 0.05, power: float = 0.8, cap: int = 1000
) -> int:
    """Smallest runs per arm (>= 2) whose two-sided two-sample t-test on run success rates detects `effect` with
    `power` at `alpha`, given the between-seed standard deviation `sd` (both in success-rate units).

    Args:
        sd: between-seed standard deviation of run success (pooled over the arms).
        effect: difference of mean run success to detect.
        alpha: two-sided significance level.
        power: wanted power.
        cap: largest answer; returned when even `cap` runs fall short.
    """
    if not math.isfinite(sd) or sd < 0:
        raise ValueError(f"sd={sd}: the between-seed standard deviation must be a finite number >= 0")
    if not 0 < effect <= 1 or not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"effect={effect}, alpha={alpha}, power={power}: each must lie in (0, 1)")
    if sd == 0:
        return 2
    stats = _scipy("stats")
    # the t-test never needs fewer runs than the normal approximation: start the search there
    normal = 2 * ((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * sd / effect) ** 2
    for n in range(max(2, min(cap, int(normal))), cap + 1):
        if t_test_power(n, effect, sd, alpha) >= power:
            return n
    return cap


def pooled_sd(arms: Mapping[str, Arm]) -> float:
    """Between-seed standard deviation of run success pooled over arms (each arm's sample variance weighted by
    its degrees of freedom); arms with one run contribute nothing."""
    num = den = 0.0
    for label, arm in arms.items():
        rates = np.array([v.mean() for v in _outcomes(arm, label).values()])
        if rates.size > 1:
            num += rates.var(ddof=1) * (rates.size - 1)
            den += rates.size - 1
    if den == 0:
        raise ValueError("no arm has two evaluated runs: the between-seed spread cannot be estimated")
    return math.sqrt(num / den)


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> dict:
    """Spearman rank correlation over runs (e.g. held-out action L1 against closed-loop success); rho and p are
    None with fewer than 3 runs or a constant series."""
    stats = _scipy("stats")
    if len(x) != len(y):
        raise ValueError(f"rank_correlation: {len(x)} x values and {len(y)} y values; give one pair per run")
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return {"rho": None, "p": None, "runs": len(x)}
    res = stats.spearmanr(x, y)
    return {"rho": float(res.statistic), "p": float(res.pvalue), "runs": len(x)}
