"""Intervals over seeds (adapt.metrics) and the measured figures the Train tab shows beside a method
(adapt.evidence, from the benchmarks' records in docs/evidence/)."""

import json

import numpy as np
import pytest

from adapt import evidence
from adapt.metrics import format_interval, mean_interval, paired_difference


def test_mean_interval_is_students_t():
    values = [0.40, 0.42, 0.45, 0.39, 0.44]
    mean, half = mean_interval(values)
    assert mean == pytest.approx(0.42)
    assert half == pytest.approx(2.776 * np.std(values, ddof=1) / np.sqrt(5), rel=1e-3)  # t(0.975, 4)
    assert np.isnan(mean_interval([0.5])[1])


def test_paired_difference_pairs_by_seed():
    a = {0: 0.50, 1: 0.61, 2: 0.40, 3: 0.55}
    b = {0: 0.45, 1: 0.57, 2: 0.36, 3: 0.50, 9: 0.99}  # seed 9 has no partner: left out
    mean, half, n = paired_difference(a, b)
    assert n == 4 and mean == pytest.approx(0.045)
    assert abs(mean) > half  # a steady +0.04..0.05 is significant though the scores spread widely
    unpaired = mean_interval(a.values())[1] + mean_interval(list(b.values())[:4])[1]
    assert half < unpaired
    assert format_interval(mean, half, signed=True).endswith("*")
    assert not format_interval(0.01, 0.02, signed=True).endswith("*")


def record(tmp_path, family, data):
    folder = tmp_path / family
    folder.mkdir()
    (folder / evidence.RECORDS[family]).write_text(json.dumps(data))
    return str(folder)


SAM = {
    "benchmark": "bench/fewshot_sam.py",
    "backbone": "tiny-sam",
    "metric": "held-out Dice",
    "reference": "decoder",
    "shots": [5, 10, 20],
    "seeds": [0, 1, 2, 3, 4],
    "frozen": 0.3,
    "methods": {
        "decoder": {"params": 0, "dice": [0.37, 0.03]},
        "parser": {"params": 1760, "dice": [0.44, 0.05], "vs_reference": [0.067, 0.022]},
        "lora": {"params": 6144, "dice": [0.40, 0.04], "vs_reference": [0.01, 0.02]},
        "parser scope=conv": {"params": 224, "dice": [0.43, 0.05], "vs_reference": [0.05, 0.02]},
    },
}


def test_describe_says_significant_only_where_the_interval_excludes_zero(tmp_path):
    folder = record(tmp_path, "sam", SAM)
    parser = evidence.describe("sam", "parser", folder)
    assert "parser 0.440 [0.390, 0.490]" in parser and "(significant)" in parser
    assert "decoder 0.370" in parser and "lora 0.400" in parser and "scope=conv" not in parser
    lora = evidence.describe("sam", "lora", folder)
    assert "not significant" in lora and "(significant)" not in lora
    assert "the reference" in evidence.describe("sam", "decoder", folder)
    assert evidence.describe("sam", "cobot-lora", folder) == ""  # not measured: nothing is said


def test_describe_without_a_record_says_nothing(tmp_path):
    assert evidence.describe("clip", "hclip", str(tmp_path)) == ""
    (tmp_path / evidence.RECORDS["clip"]).write_text("{not json")
    evidence.load.cache_clear()
    assert evidence.describe("clip", "hclip", str(tmp_path)) == ""


def test_describe_clip_against_zero_shot(tmp_path):
    figures = {"seen_miou": [0.41, 0.02], "unseen_miou": [0.40, 0.03], "hiou": [0.40, 0.02]}
    data = {
        "benchmark": "bench/openvocab.py",
        "backbone": "tiny-clip",
        "split": "colours",
        "reference": "frozen (zero-shot)",
        "seeds": [0, 1, 2, 3, 4],
        "methods": {
            "hclip": {"name": "hclip", "options": {}, **figures, "unseen_miou_vs_reference": [0.005, 0.02]},
            "hclip, no DCRC": {"name": "hclip", "options": {"dcrc": False}, **figures},
            "frozen (zero-shot)": {"name": "frozen", "options": {}, **figures},
        },
    }
    text = evidence.describe("clip", "hclip", record(tmp_path, "clip", data))
    assert "**hclip**" in text and "not significant" in text and "frozen (zero-shot): seen" in text
    assert "no DCRC" not in text


@pytest.mark.parametrize("family", sorted(evidence.RECORDS))
def test_the_shipped_records_describe_their_methods(family):
    """docs/evidence/ holds the seeded runs recorded in docs/benchmarks.md; every method in them that
    is a plain configuration gets its figures in the Train tab."""
    data = evidence.load(family)
    assert data is not None, f"docs/evidence/{evidence.RECORDS[family]} is missing"
    assert len(data["seeds"]) >= 5
    plain = {e["name"] for e in data["methods"].values() if not e["options"]}
    for method in plain:
        assert "**Measured**" in evidence.describe(family, method), method


def test_the_train_tab_shows_the_measured_figures():
    from app.catalog import describe_method

    text, _ = describe_method("tiny-sam", "parser")
    assert "**Measured** on tiny-sam" in text and "docs/benchmarks.md" in text
