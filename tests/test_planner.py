"""The pre-flight memory planner (adapt.planner, `train --plan`): estimates that move the right
way, plans that fit the budget, and a clear refusal when nothing fits."""

from __future__ import annotations

import pytest

from adapt.__main__ import main
from adapt.planner import estimate, make_plan, parse_bytes


def test_sizes_parse_and_bad_ones_are_named():
    assert parse_bytes("16GB") == parse_bytes("16 GiB") == 16 * 2**30
    assert parse_bytes("800MB") == 800 * 2**20 and parse_bytes(1000) == 1000
    with pytest.raises(ValueError, match="like 16GB"):
        parse_bytes("lots")


def test_estimates_grow_with_the_batch_and_shrink_with_checkpointing():
    e = {
        (m, b, c, p): estimate("sam-vit-b", m, b, c, p).total
        for m in ("parser", "full")
        for b in (1, 4)
        for c in (False, True)
        for p in ("fp32", "bf16")
    }
    for m in ("parser", "full"):
        for p in ("fp32", "bf16"):
            assert e[(m, 4, False, p)] > e[(m, 1, False, p)]
            assert e[(m, 4, True, p)] < e[(m, 4, False, p)]
    assert e[("full", 1, True, "bf16")] > e[("parser", 1, True, "bf16")]  # gradients and AdamW state
    # half precision halves what is kept, except materialised attention: autocast runs softmax in fp32
    # and keeps its fp32 output beside the half copy the next matmul saves (6 bytes a value, not 4),
    # so SAM's eager form, whose attention matrices dominate at 1024 px, gains nothing; CLIP's fused
    # attention does, and so does SAM's fused form
    clip = {p: estimate("clip-vit-b-16", "hclip", 8, False, p) for p in ("fp32", "bf16")}
    assert clip["bf16"].activations < 0.6 * clip["fp32"].activations
    sam = {(a, p): estimate("sam-vit-b", "parser", 1, False, p, attention=a) for a in ("eager", "fused") for p in ("fp32", "bf16")}  # fmt: skip
    assert sam[("eager", "bf16")].activations > sam[("eager", "fp32")].activations
    assert sam[("fused", "bf16")].activations < 0.6 * sam[("fused", "fp32")].activations
    assert sam[("fused", "fp32")].activations < 0.6 * sam[("eager", "fp32")].activations
    # a frozen encoder keeps no activations: decoder-only is lighter than any adapter at the same batch
    assert (
        estimate("sam-vit-b", "decoder", 4, False, "bf16").activations
        < estimate("sam-vit-b", "parser", 4, False, "bf16").activations
    )


def test_the_fused_attention_brings_vit_h_adapters_near_12_gb():
    """ViT-H at 1024 px, batch 1, bf16, no checkpointing (the GPU's folded form): LoRA from 22.3 GB
    (eager) to under 12 GB; PARSER, which keeps every linear layer's input, from 25.9 GB to under 15."""
    gib = 2**30
    for method, eager_gb, fused_gb in [("lora", 22.3 * gib, 12 * gib), ("parser", 25.9 * gib, 15 * gib)]:
        eager = estimate("sam-vit-h", method, 1, False, "bf16", attention="eager").total
        fused = estimate("sam-vit-h", method, 1, False, "bf16", attention="fused").total
        assert eager == pytest.approx(eager_gb, rel=0.01) and fused < fused_gb, (method, eager, fused)
    cpu = estimate("sam-vit-h", "lora", 1, False, "fp32", attention="fused", device="cpu").total
    assert cpu < estimate("sam-vit-h", "lora", 1, False, "fp32", attention="eager", device="cpu").total


@pytest.mark.parametrize("budget", ["12GB", "16GB", "24GB", "40GB"])
def test_a_plan_fits_its_budget_and_keeps_the_batch(budget):
    plan = make_plan("sam-vit-h", "parser", 8, budget)
    assert plan.fits and plan.estimate.total <= parse_bytes(budget)
    assert plan.micro_batch * plan.accumulate >= 8 and plan.micro_batch <= 8
    assert "Fits with micro-batches" in plan.describe()


def test_more_memory_never_gives_a_smaller_micro_batch_or_more_recomputation():
    plans = [make_plan("sam-vit-h", "lora", 8, f"{gb}GB") for gb in (12, 16, 24, 40, 80)]
    for small, big in zip(plans, plans[1:]):
        assert (big.checkpointing, -big.micro_batch) <= (small.checkpointing, -small.micro_batch)


def test_what_cannot_fit_is_refused_with_what_to_change():
    plan = make_plan("sam-vit-h", "full", 4, "6GB")
    assert not plan.fits
    assert "does not fit" in plan.describe() and "parameter-efficient method" in plan.describe()


def test_train_plan_needs_no_data(capsys):
    args = ["train", "--plan", "--backbone", "sam-vit-h", "--method", "parser", "--memory-budget", "24GB"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "parser on sam-vit-h" in out and "Fits with" in out
    assert main(["train", "--plan", "--backbone", "sam-vit-h", "--method", "full", "--memory-budget", "6GB"]) == 1
    assert "does not fit" in capsys.readouterr().out


def test_a_budget_sets_the_runs_accumulation_and_checkpointing(tmp_path, capsys):
    from adapt.data.synthetic import make_dataset, write_folder

    data = write_folder(make_dataset("camouflage", n=4, size=64, seed=1), tmp_path / "d", task="dichotomous")
    tiny = make_plan("tiny-sam", "parser", 4, "1GB", precision="fp32")
    budget = int(estimate("tiny-sam", "parser", 1, True, "fp32").total * 1.01)  # fits only 1 at a time
    plan = make_plan("tiny-sam", "parser", 4, budget, precision="fp32")
    assert tiny.micro_batch == 4 and plan.fits and plan.micro_batch == 1 and plan.checkpointing
    args = ["train", "--data", str(data), "--steps", "1", "--batch-size", "4", "--holdout", "1"]
    assert main(args + ["--memory-budget", str(budget), "--out", str(tmp_path / "run"), "--json"]) == 0
    assert "memory plan:" in capsys.readouterr().err
    import json

    start = json.loads((tmp_path / "run" / "events.jsonl").read_text().splitlines()[0])
    assert start["config"]["accumulate"] == 4 and start["config"]["checkpointing"] is True


def test_the_estimate_stays_within_20_percent_of_the_recorded_cpu_peaks():
    """The step memory bench/planner_check.py measured (docs/planner_cpu.json: SAM ViT-B/L and CLIP
    ViT-B/16, L/14, every kind of method, with and without checkpointing), against the planner
    as it is now: a change to its model that loses the calibration fails here."""
    import json
    from pathlib import Path

    recorded = json.loads((Path(__file__).parents[1] / "docs" / "planner_cpu.json").read_text())
    cases = [m for part in ("calibration", "validation", "fused") for m in recorded[part]["results"]]
    assert len(cases) >= 24 and {m.get("attention", "eager") for m in cases} == {"eager", "fused"}
    for m in cases:
        texts = {"texts": 3} if m["backbone"].startswith("clip") else {}  # example_inputs' 3 prompts
        form = {"attention": m.get("attention", "eager"), "device": "cpu"}  # the eager ones predate the fused form
        e = estimate(m["backbone"], m["method"], m["batch"], m["checkpointing"], "fp32", **texts, **form)
        error = (e.trainable_state + e.activations) / m["step_bytes"] - 1
        assert abs(error) <= 0.2, (m["backbone"], m["method"], m["batch"], m["checkpointing"], round(error, 3))


def test_a_method_without_a_memory_profile_is_refused(monkeypatch):
    """A new method declares what a training step costs (`memory` in its class); one that declares
    nothing, a subclass of a method that does included, gets a clear refusal rather than some
    other method's estimate."""
    from adapt.methods import METHODS
    from adapt.methods.lora import Lora

    class Unprofiled(Lora):
        name = "unprofiled"

    monkeypatch.setitem(METHODS, Unprofiled.name, Unprofiled)
    for plan in (
        lambda: make_plan("tiny-sam", "unprofiled", 2, "8GB"),
        lambda: estimate("tiny-sam", "unprofiled", 1, False, "fp32"),
    ):
        with pytest.raises(ValueError, match="'unprofiled' declares no memory profile"):
            plan()
