"""Every path the docs name still resolves: README.md, docs/*.md and the spec's layout tree refer to
files a reader can open."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# a repository path: a top-level folder of this repo, then path parts, ending in a file suffix
PATH = re.compile(
    r"(?<![\w/.-])((?:adapt|app|bench|tests|docs|devtools|weights|assets)/[\w./-]*\.(?:py|md|json|png|txt|csv))"
)


def named_paths(text: str) -> set[str]:
    return {m.group(1) for m in PATH.finditer(text) if "*" not in m.group(1)}


def test_the_pattern_finds_paths():
    assert named_paths("see `app/jobs/store.py:12` and docs/img/a.png, not x/app/y.py") == {
        "app/jobs/store.py",
        "docs/img/a.png",
    }


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_named_path_exists(doc):
    missing = sorted(p for p in named_paths(doc.read_text()) if not (REPO / p).exists())
    assert missing == [], f"{doc.name} names paths that do not exist: {missing}"
