"""Functions stay short (docs/design.md, issue 25): none in stamo_vla/ is over 60 lines unless a ``# long:``
comment on its ``def`` line or the line above says why it reads best whole.

Measured with `ast` on the source, the whole function (decorators excluded, docstring included); nothing is
imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "stamo_vla"
MAX_LINES = 60
REASON = "# long:"


def long_functions(source: str, max_lines: int = MAX_LINES) -> list[tuple[str, int, int]]:
    """(name, first line, length) of every function in `source` over `max_lines` lines without a reason."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        length = node.end_lineno - node.lineno + 1
        around = lines[max(node.lineno - 2, 0) : node.lineno]  # the line above and the def line
        if length > max_lines and not any(REASON in line for line in around):
            found.append((node.name, node.lineno, length))
    return found


def test_the_check_sees_a_long_function_and_its_reason():
    body = "".join(f"    x{i} = {i}\n" for i in range(60))
    source = f"def short():\n    pass\n\n\ndef long():\n{body}"
    assert long_functions(source) == [("long", 5, 61)]
    assert long_functions(f"# long: a table reads best whole\ndef long():\n{body}") == []
    assert long_functions(f"def long():  # long: one state machine\n{body}") == []
    method = "class A:\n    def long(self):\n" + body.replace("    ", "        ")
    assert long_functions(method) == [("long", 2, 61)]


def test_no_function_over_60_lines_without_a_reason():
    hits = [
        f"{path.relative_to(ROOT)}:{line} {name} is {length} lines"
        for path in sorted(PACKAGE.rglob("*.py"))
        for name, line, length in long_functions(path.read_text())
    ]
    assert not hits, (
        f"functions over {MAX_LINES} lines: split them, or say why one reads best whole in a "
        f"'{REASON} <reason>' comment on its def line or the line above:\n" + "\n".join(hits)
    )
