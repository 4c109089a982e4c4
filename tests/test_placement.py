"""Where the app's predictors run (app/placement.py) and how jobs are planned around them
(app.studio.job_plan): a GPU that cannot take a model sends it to the CPU with a message; a GPU
out-of-memory mid-request finishes on the CPU; a job leaves room for the predictor; a memory
budget from the Train tab plans the job on any machine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from studio_support import OWNER, dataset_zip

import app.studio as service
from app import labeller, placement
from app.config import Limits, Paths
from app.studio import Studio, UserError, estimate_memory, job_plan


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch reports a GPU; whatever asks it for memory gets `state['free']`, or the error in
    `state['error']` (a GPU that is visible but unusable)."""
    state = {"free": 80 * 2**30, "error": None}

    def mem_get_info(*_):
        if state["error"]:
            raise RuntimeError(state["error"])
        return state["free"], 80 * 2**30

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(service, "has_gpu", lambda: True)
    monkeypatch.setattr(labeller, "_predictors", {})
    monkeypatch.setattr(placement, "_on_gpu", set())
    monkeypatch.delenv(placement.ENV, raising=False)
    return state


def test_an_unavailable_gpu_sends_previews_and_clicks_to_the_cpu_saying_so(tmp_path, fake_gpu):
    fake_gpu["error"] = "CUDA error: no CUDA-capable device is detected"
    studio = Studio(Paths(tmp_path / "studio"), Limits())
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    path = tmp_path / "a.png"
    import cv2

    cv2.imwrite(str(path), image)
    outputs, desc = studio.predict(OWNER, str(path), "", "tiny-sam", "dichotomous")
    assert outputs["main"].shape == (96, 128)
    assert "running on the CPU: the GPU could not take the model (CUDA error: no CUDA-capable device" in desc
    task_obj, _, where = studio.model(OWNER, "", "tiny-sam", "dichotomous")
    assert where.device == "cpu" and next(task_obj.backbone.model.parameters()).device.type == "cpu"

    state = labeller.new_state(image, "a.png")
    labeller.click(state, 40, 30, labeller.MODES[0])
    labeller.propose(state, "tiny-sam")
    assert state["proposal"].shape == (96, 128)
    assert "GPU could not take the model" in state["device_note"]
    pred, _ = labeller.predictor("tiny-sam")
    assert pred.device == "cpu"


def test_a_gpu_without_room_keeps_the_model_on_the_cpu(fake_gpu):
    from adapt.backbones import build_backbone

    fake_gpu["free"] = 1000
    where = placement.place(build_backbone("tiny-sam"), "tiny-sam")
    assert where.device == "cpu" and "the GPU has 0 MB free and this model needs about" in where.note


def test_the_cpu_can_be_chosen_and_a_bad_choice_is_named(fake_gpu, monkeypatch):
    from adapt.backbones import build_backbone

    monkeypatch.setenv(placement.ENV, "cpu")
    assert placement.place(build_backbone("tiny-sam"), "tiny-sam") == placement.Placement("cpu", "")
    assert placement.reservation("sam-vit-b") == 0
    monkeypatch.setenv(placement.ENV, "tpu")
    with pytest.raises(ValueError, match="ADAPT_PREDICT_DEVICE must be one of auto, cpu, cuda"):
        placement.choice()


def test_a_gpu_out_of_memory_mid_request_finishes_on_the_cpu():
    from adapt.backbones import build_backbone

    backbone = build_backbone("tiny-sam")
    where = placement.Placement("cuda", "on the GPU")
    devices = []

    def predict(device):
        devices.append(device)
        if device == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "done"

    assert placement.run(predict, backbone, where) == "done"
    assert devices == ["cuda", "cpu"] and where.device == "cpu"
    assert where.note.startswith("moved to the CPU: the GPU ran out of memory (CUDA out of memory")
    assert placement.run(predict, backbone, where) == "done" and devices[-1] == "cpu"  # and stays there


def test_a_job_leaves_room_for_the_predictor(fake_gpu):
    from adapt.planner import inference_estimate

    room = placement.reservation("sam-vit-b")
    # more than the predictor's weights (375 MB): its transient and cached embeddings too
    assert room == inference_estimate("sam-vit-b", cache=placement.cache_entries("sam-vit-b", "cuda")) > 2**29
    fake_gpu["free"] = 24 * 2**30
    plan = job_plan("sam-vit-b", "lora", 1)
    assert plan.budget == 24 * 2**30 - room
    assert job_plan("sam-vit-b", "lora", 1, "12GB").budget == 12 * 2**30  # a budget below what is free
    assert job_plan("sam-vit-b", "lora", 1, "64GB").budget == 24 * 2**30 - room  # ... never above it
    placement._on_gpu.add(1)  # a predictor already on the GPU: its memory is no longer free
    assert placement.reservation("sam-vit-b") == 0


def test_a_memory_budget_plans_the_job_on_a_cpu_machine_too(tmp_path, monkeypatch):
    monkeypatch.setattr(service, "has_gpu", lambda: False)
    assert job_plan("tiny-sam", "parser", 4) is None  # nothing to plan for
    plan = job_plan("tiny-sam", "parser", 4, "1GB")
    assert plan.fits and plan.precision == "fp32" and plan.micro_batch == 4
    assert "Memory plan (this machine has no GPU" in estimate_memory("tiny-sam", "parser", 4, "1GB")
    assert "Will not fit" in estimate_memory("sam-vit-h", "full", 4, "2GB")
    assert "Cannot estimate: memory budget: a memory size like 16GB" in estimate_memory("tiny-sam", "parser", 4, "lots")
    studio = Studio(Paths(tmp_path / "studio"), Limits())
    data = dataset_zip(tmp_path, n=4, size=64)
    with pytest.raises(UserError, match="would not fit.*does not fit"):
        studio.submit(OWNER, str(data), "dichotomous", "sam-vit-b", "full", 5, 1e-3, 1e-4, 4, memory_budget="1GB")
    with pytest.raises(UserError, match="memory budget: give a positive size"):
        studio.submit(OWNER, str(data), "dichotomous", "tiny-sam", "parser", 5, 1e-3, 1e-4, 4, memory_budget="0GB")
    assert studio.store.list(OWNER) == []  # nothing was queued
    tight = int(plan.estimate.total * 0.6)
    job = studio.submit(
        OWNER, str(data), "dichotomous", "tiny-sam", "parser", 5, 1e-3, 1e-4, 4, memory_budget=str(tight)
    )
    spec = studio.store.get(job, OWNER)["config"]["train"]
    assert spec["accumulate"] > 1 or spec["checkpointing"]
