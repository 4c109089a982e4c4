"""What each method measured in the benchmarks' seeded runs, for the studio to show beside it.

The records are written by the benchmarks themselves (`bench/fewshot_sam.py --seeds ... --record`,
`bench/openvocab.py --seeds ... --record`) into docs/evidence/, one per family: means over seeds
with 95% intervals, and paired differences to the family's reference (decoder-only training for
SAM, zero-shot CLIP for the open-vocabulary task). Beside a method's figures stand the reference's
and those of the methods that declare themselves a baseline of the family (Handle.baseline_for).
Nothing here measures anything; a method with no record gets no text, and a difference is called
significant only where its interval excludes 0.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from adapt.methods import baselines
from adapt.metrics import format_interval
from adapt.weights import REPO_ROOT

EVIDENCE_DIR = REPO_ROOT / "docs" / "evidence"
RECORDS = {"sam": "fewshot_sam.json", "clip": "openvocab.json"}


@cache
def load(family: str, folder: str | None = None) -> dict | None:
    """The family's record, or None when there is none (or it cannot be read)."""
    path = Path(folder or EVIDENCE_DIR) / RECORDS.get(family, "")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _entry(record: dict, method: str) -> tuple[str, dict] | None:
    """(label, figures) of the method's plain configuration (no options) in the record."""
    for label, e in record["methods"].items():
        if e.get("name", label) == method and not e.get("options"):
            return label, e
    return None


def _difference(pair) -> str:
    text = format_interval(*pair, signed=True)
    significant = text.endswith("*")
    return text.removesuffix(" *") + (
        " (significant)" if significant else " (0 is within the interval: not significant)"
    )


def describe(family: str, method: str, folder: str | None = None) -> str:
    """Markdown: the method's measured figures beside the baselines', or "" when not measured."""
    record = load(family, folder)
    found = _entry(record, method) if record else None
    if not found:
        return ""
    label, e = found
    seeds = len(record.get("seeds", []))
    if family == "sam":
        reference = record["reference"]
        head = (
            f"**Measured** on {record['backbone']} ({record['benchmark']}: {seeds} seeds, "
            f"{'/'.join(map(str, record.get('shots', [])))} shots, synthetic domains; {record['metric']}, "
            f"mean [95% interval]): **{label} {format_interval(*e['dice'])}**"
        )
        head += (
            ", the reference."
            if label == reference
            else f"; against {reference}-only {_difference(e['vs_reference'])}."
        )
        others = [
            f"{m} {format_interval(*x['dice'])}"
            for m, x in record["methods"].items()
            if (m == reference or m in baselines(family)) and m != label
        ]
        tail = f" Baselines: {', '.join(others)}; frozen {record['frozen']:.3f}." if others else ""
        return head + tail + " Details and per-domain figures: docs/benchmarks.md."
    scores = lambda x: (  # noqa: E731
        f"seen {format_interval(*x['seen_miou'])}, unseen {format_interval(*x['unseen_miou'])}, "
        f"hIoU {format_interval(*x['hiou'])}"
    )
    head = (
        f"**Measured** on {record['backbone']} ({record['benchmark']}, {record['split']} split: {seeds} seeds, "
        f"mIoU, mean [95% interval]): **{label}**: {scores(e)}"
    )
    if "unseen_miou_vs_reference" in e:
        head += f"; unseen against zero-shot {_difference(e['unseen_miou_vs_reference'])}"
    others = [
        f"{m}: {scores(x)}"
        for m, x in record["methods"].items()
        if m != label and not x.get("options") and x.get("name") in baselines(family)
    ]
    tail = f". Baselines: {'; '.join(others)}." if others else "."
    return head + tail + " Details: docs/benchmarks.md."
