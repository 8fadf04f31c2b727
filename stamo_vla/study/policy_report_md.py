"""The markdown of a policy study's REPORT.md, from the data `policy_report.write_report` gathered."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stamo_vla.study.policy_study import PolicyStudy


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _ci(ci) -> str:
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def _p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _versions(versions: dict[str, list[str]]) -> str:
    """Code versions and the stages each ran, as one phrase."""
    return ", ".join(f"`{k}` ({', '.join(v)})" for k, v in versions.items()) or "none recorded"


def _header(study: PolicyStudy, data: dict) -> list[str]:
    cfg, prov = study.cfg, data["provenance"]
    lines = [
        f"# Policy study: {cfg.suite} tasks {cfg.eval_task_ids}, arms {cfg.primary_arms + cfg.secondary_arms}",
        "",
    ]
    lines.append(
        f"Produced by `{data['commands'][0]}` (every command line and the config are in `study.json`)."
    )
    if len(data["commands"]) > 1:
        same = len(set(data["commands"])) == 1
        how = "with the same command" if same else "(every command line is in `study.json`)"
        lines.append(f"It was resumed {len(data['commands']) - 1} time(s) {how}.")
    lines.append(f"Code: {_versions(prov['versions'])}.")
    if prov["mixed"]:
        lines.append(
            "**Mixed run: the stages ran from more than one version of the code (`--allow_mixed_commits true`); "
            "its numbers do not come from one commit.**"
        )
    if prov.get("inputs_from"):
        reused = prov["inputs_from"]
        lines.append(
            f"Inputs (demonstrations, StaMo model, base, target caches) are read from the study in "
            f"`{reused['output_dir']}`, whose stages ran from {_versions(reused['versions'])}."
        )
    if any(k.endswith("+dirty") for k in prov["versions"]):
        lines.append("Some calls ran from a tree with uncommitted changes to tracked files (`+dirty`).")
    if data["config_differences"]:
        lines.append(
            f"**This report was written with other values than the stages ran with, for {data['config_differences']}: "
            "rerun the report stage with the study's own options (its `--config` and overrides).**"
        )
    machines = "; ".join(f"{m['cpu']}, {m['cores']} cores" for m in prov["machines"]) or "not recorded"
    lines += [f"Machine: {machines}.", "", f"Wall time per stage: {_fmt_times(data['stage_seconds'])}", ""]
    return lines


def _fmt_times(times: dict[str, dict]) -> str:
    if not times:
        return "none"
    parts = []
    for name, t in times.items():
        note = []
        if t["calls"] is None:
            note.append("finishing call only")
        elif t["calls"] > 1:
            note.append(f"{t['calls']} calls")
        if not t["finished"]:
            note.append("running")
        parts.append(f"{name} {t['seconds'] / 60:.1f} min" + (f" ({', '.join(note)})" if note else ""))
    total = sum(t["seconds"] for t in times.values()) / 60
    return ", ".join(parts) + f"; total {total:.1f} min, each stage summed over every call that worked on it."


def _power(data: dict) -> list[str]:
    lines = ["## Seeds, fixed by the power stage before the remaining runs", ""]
    plan = data["power"]
    if plan is None:
        return [*lines, "The power stage has not run: the seeds per arm are not fixed yet.", ""]
    lines += [f"Rule: {plan['rule']}", ""]
    lines.append(
        f"Pilot between-seed SD {_pct(plan['between_seed_sd'])} points -> {plan['required_seeds']} seeds per arm "
        f"required (written {plan.get('written', '?')} from `{plan.get('commit')}`)."
    )
    if plan["budget_limited"]:
        lines.append(
            f"**The budget ({plan['budget_s'] / 3600:.1f} h) does not cover them: the primary arms get fewer.**"
        )
    given = ", ".join(f"`{a}` {len(s)}" for a, s in plan["seeds"].items())
    lines += [f"Seeds given: {given} (cost per run {plan['run_cost_s'] / 60:.1f} min).", ""]
    return lines


def _verdict(data: dict) -> list[str]:
    from stamo_vla.study.policy_report import VERDICT_RULE

    lines = ["## Verdict as measured (primary endpoint: standard success, seed-level 95% interval)", ""]
    lines += [VERDICT_RULE, ""]
    if not data["comparisons"]:
        return [*lines, "No comparison has two evaluated arms yet.", ""]
    for c in data["comparisons"]:
        b = c["bootstrap"]
        lines.append(
            f"- `{c['a']}` vs `{c['b']}`: {_pct(b['difference']):>5} points {_ci(b['ci'])}, permutation p = "
            f"{_p(c['permutation']['p'])} -> {c['verdict']}."
        )
    return [*lines, ""]


def _arm_table(data: dict) -> list[str]:
    lines = ["## Success per arm (mean over runs; 95% hierarchical bootstrap over seeds, then episodes)", ""]
    lines += ["| arm | runs | standard success | perturbed success | collapsed runs | held-out action L1 |"]
    lines += ["|---|---:|---|---|---|---:|"]
    for arm, s in data["arms"].items():
        if s is None:
            lines.append(f"| {arm} | 0 | not evaluated | | | |")
            continue
        st, pe, co = s["standard"], s["perturbed"], s["collapse"]
        pert = f"{_pct(pe['mean'])} {_ci(pe['ci'])}" if pe else "-"
        col = f"{co['collapsed']}/{co['runs']} ({_pct(co['rate'])}% {_ci(co['ci95'])})"
        l1 = "-" if s["heldout_action_l1"] is None else f"{s['heldout_action_l1']:.4f}"
        lines.append(f"| {arm} | {st['runs']} | {_pct(st['mean'])} {_ci(st['ci'])} | {pert} | {col} | {l1} |")
    return [*lines, ""]


def _families(data: dict) -> list[str]:
    """Perturbed success per perturbation family and arm (mean over runs)."""
    rows: dict[str, dict[str, list[float]]] = {}
    for r in data["runs"]:
        for family, summary in r["perturbed_families"].items():
            rows.setdefault(family, {}).setdefault(r["arm"], []).append(summary["success_rate"])
    if not rows:
        return []
    arms = list(data["arms"])
    lines = ["Perturbed success per family (mean over runs, runs in brackets):", ""]
    lines += ["| family | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for family, per_arm in rows.items():
        cells = [f"{_pct(sum(v) / len(v))} ({len(v)})" if (v := per_arm.get(a)) else "-" for a in arms]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _base(data: dict) -> list[str]:
    base = data["base"]
    if not base:
        return ["Base: not trained yet.", ""]
    return [
        f"Base (full-parameter, token actions, base tasks only): {base.get('step')} steps, final train loss "
        f"{base.get('loss', float('nan')):.3f}, token accuracy {base.get('action_accuracy', float('nan')):.3f}.",
        "",
    ]


def _comparison_table(data: dict) -> list[str]:
    lines = ["## Paired differences (first arm minus second, points)", ""]
    lines += [
        "| comparison | seeds | standard diff [95% CI] | permutation p | mixed model (logits) [95% CI] | "
        "perturbed diff [95% CI] | collapse Fisher p |",
        "|---|---|---|---|---|---|---:|",
    ]
    for c in data["comparisons"]:
        b, perm, mm = c["bootstrap"], c["permutation"], c["mixed_model"]
        how = "paired by seed" if b["paired"] else f"unpaired ({len(c['seeds_a'])} vs {len(c['seeds_b'])})"
        exact = "exact" if perm["exact"] else "Monte Carlo"
        pert = f"{_pct(c['perturbed']['difference'])} {_ci(c['perturbed']['ci'])}" if c["perturbed"] else "-"
        if mm["effect"] is None:
            mixed = "not estimable (an arm at 0% or 100% in every run)"
        else:
            ci = "[not estimable]" if mm["ci"] is None else f"[{mm['ci'][0]:+.2f}, {mm['ci'][1]:+.2f}]"
            mixed = f"{mm['effect']:+.2f} {ci}"
        lines.append(
            f"| {c['a']} vs {c['b']} | {how} | {_pct(b['difference'])} {_ci(b['ci'])} | {_p(perm['p'])} ({exact}, "
            f"{perm['arrangements']} arrangements) | {mixed} | {pert} | {_p(c['collapse_fisher_p'])} |"
        )
    return [*lines, ""]


def _runs_table(data: dict) -> list[str]:
    lines = ["## Every run (Wilson 95% interval of that run alone)", ""]
    lines += ["| run | standard | perturbed | held-out action L1 | held-out target loss | minutes |"]
    lines += ["|---|---|---|---:|---:|---:|"]
    for r in data["runs"]:
        ho = r["heldout"] or {}
        std = (
            f"{_pct(r['standard']['success_rate'])} {_ci(r['standard']['ci95'])}"
            if r["standard"]
            else "not evaluated"
        )
        pert = (
            f"{_pct(r['perturbed']['success_rate'])} {_ci(r['perturbed']['ci95'])}" if r["perturbed"] else "-"
        )
        l1 = f"{ho['action_l1']:.4f}" if "action_l1" in ho else "-"
        fut = f"{ho['loss_future']:.4f}" if "loss_future" in ho else "-"
        minutes = "-" if r["seconds"] is None else f"{r['seconds'] / 60:.1f}"
        flag = " (collapsed)" if r["collapsed"] else ""
        lines.append(f"| {r['arm']}_seed{r['seed']}{flag} | {std} | {pert} | {l1} | {fut} | {minutes} |")
    rho = data["heldout_l1_vs_success"]
    if rho["rho"] is not None:
        lines += [
            "",
            f"Held-out action L1 against standard success over {rho['runs']} runs: Spearman rho = "
            f"{rho['rho']:+.2f} (p = {_p(rho['p'])}).",
        ]
    return [*lines, ""]


def _diagnosis(data: dict) -> list[str]:
    lines = ["## Collapsed runs", ""]
    collapsed = [r for r in data["runs"] if r["collapsed"]]
    if not collapsed:
        lines.append("No evaluated run collapsed.")
    for r in collapsed:
        name = f"{r['arm']}_seed{r['seed']}"
        videos = (
            ", ".join(f"[{v.rsplit('/', 1)[-1][:40]}]({v})" for v in data["videos"].get(name, []))
            or "none kept"
        )
        tasks = ", ".join(
            f"task {t}: {v['successes']}/{v['episodes']}, failures end after {v['mean_failed_steps']:.0f} steps"
            for t, v in r["standard_tasks"].items()
            if v["mean_failed_steps"] is not None
        )
        standard = f"{r['standard']['successes']}/{r['standard']['episodes']}"
        lines.append(f"- `{name}`: {standard} standard ({tasks}); failure videos: {videos}.")
    rep = data["reproduce"]
    if rep is None:
        lines.append("\nThe reproduce stage has not run.")
    elif rep["run"] is None:
        lines.append(f"\nReproduce stage: {rep['reason']}.")
    else:
        same = (
            "reproduces it bit for bit"
            if rep["identical"]
            else (
                f"does not reproduce it: {rep['differing']} of {rep['tensors']} tensors differ (max |diff| "
                f"{rep['max_abs_diff']:.3g}), {len(rep['missing'])} missing"
            )
        )
        lines.append(f"\nA from-scratch retrain of `{rep['run']}` {same}.")
    return [*lines, ""]


def _evidence(study: PolicyStudy, data: dict) -> list[str]:
    cfg = study.cfg
    lines = ["## Demonstrations (fresh initial states, never the 50 test states)", ""]
    lines += [
        "| data | episodes | attempts | render px | min distance to a test state | disjoint |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for kind, ev in data["collection"].items():
        dist = "n/a" if ev["min_distance"] is None else f"{ev['min_distance']:.4f}"
        lines.append(
            f"| {kind} | {ev['episodes']} | {ev['attempts']} | {ev['render_resolution'] or '-'} | {dist} | {ev['disjoint']} |"
        )
    lines += [
        "",
        f"Held-out metrics: every episode of `{study.dataset('heldout')}` ({cfg.heldout_episodes} per evaluated task, "
        "collected with the next seed): no run trained on them. Standard evaluation: the first "
        f"{cfg.trials_per_task} of each task's 50 fixed initial states, identical for every run; perturbed: "
        f"{cfg.perturbed_suites or 'none'}. Departures, for CPU cost: cameras render at {cfg.env_resolution} px "
        "(the benchmark: 256) only on the steps the policy reads; the policy sees 112 px.",
        "",
    ]
    return lines


def markdown(study: PolicyStudy, data: dict, figures: list[str]) -> str:
    """REPORT.md: provenance, the seed rule (before any result), verdict, tables, figures, diagnosis.

    Args:
        study: the study.
        data: the report's numbers (runs, comparisons, power).
        figures: the figure files written beside the report.
    """
    lines = _header(study, data) + _power(data) + _verdict(data) + _arm_table(data) + _families(data)
    if "seeds.png" in figures:
        lines += ["![every seed a dot](seeds.png)", ""]
    lines += (
        _comparison_table(data) + _runs_table(data) + _diagnosis(data) + _evidence(study, data) + _base(data)
    )
    if "curves.png" in figures:
        lines += ["![training curves](curves.png)", ""]
    lines += [
        "Intervals are over seeds: the training run is the unit of replication, so no interval pools the episodes "
        "of several runs.",
        "",
    ]
    return "\n".join(lines)
