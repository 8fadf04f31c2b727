"""Every document the code cites is in the repository, so a reader of a clone can follow each citation."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    *ROOT.glob("stamo_vla/**/*.py"),
    *ROOT.glob("recipes/*.py"),
    *ROOT.glob("eval/**/*.py"),
    ROOT / "README.md",
]
CITATION = re.compile(r"(?<![\w/])(docs/[\w./-]+\.md)")
OUTSIDE = re.compile(r"(?<![\w/])(DESIGN\.md|STYLE\.md|(?<!docs/)reference/\w+\.md)")


def test_every_cited_document_exists():
    missing = [
        f"{path.relative_to(ROOT)} cites {doc}"
        for path in SOURCES
        for doc in CITATION.findall(path.read_text())
        if not (ROOT / doc).is_file()
    ]
    assert not missing, "\n".join(missing)


def test_the_code_cites_no_document_outside_the_repository():
    hits = [
        f"{path.relative_to(ROOT)} cites {doc}"
        for path in SOURCES
        for doc in OUTSIDE.findall(path.read_text())
    ]
    assert not hits, "\n".join(hits)


def test_the_code_cites_the_design():
    cited = {doc for path in SOURCES for doc in CITATION.findall(path.read_text())}
    assert {"docs/design.md", "docs/reference/openvla.md"} <= cited
