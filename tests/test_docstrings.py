"""Every public function of stamo_vla with three or more parameters documents them in a Google-style ``Args:``
section. The check reads the source with `ast`; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "stamo_vla"
MIN_PARAMS = 3


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> list[str]:
    args = node.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    if method and names and names[0] in ("self", "cls"):
        names = names[1:]
    return names + [a.arg for a in (args.vararg, args.kwarg) if a is not None]


def _public_functions(body: list[ast.stmt], method: bool = False):
    """(function, its parameters) for every public module-level function and public method of a public class."""
    for node in body:
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            yield from _public_functions(node.body, method=True)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            yield node, _parameters(node, method)


def undocumented(source: str) -> list[tuple[int, str]]:
    """(line, name) of each public function of `source` with MIN_PARAMS or more parameters and no Args section."""
    return [
        (node.lineno, node.name)
        for node, params in _public_functions(ast.parse(source).body)
        if len(params) >= MIN_PARAMS and "Args:" not in (ast.get_docstring(node) or "")
    ]


def test_the_check_finds_functions_and_methods_without_args():
    source = '''
def documented(a, b, c):
    """Sum.

    Args:
        a: one.
        b: two.
        c: three.
    """

def missing(a, b, *rest):
    """No section."""

def short(a, b):
    """Two parameters need none."""

def _private(a, b, c):
    pass

class Thing:
    def method(self, a, b):
        """Self does not count."""

    def wide(self, a, b, **kw):
        pass

class _Hidden:
    def wide(self, a, b, c):
        pass
'''
    assert undocumented(source) == [(11, "missing"), (24, "wide")]


def test_public_functions_with_three_or_more_parameters_have_an_args_section():
    missing = [
        f"stamo_vla/{path.relative_to(PACKAGE)}:{line} {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, name in undocumented(path.read_text())
    ]
    assert not missing, (
        f"{len(missing)} public functions with {MIN_PARAMS}+ parameters have no Google-style 'Args:' section in "
        "their docstring; add one naming each parameter:\n" + "\n".join(missing)
    )
