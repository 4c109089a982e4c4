"""Where the app's own models run (previews and click labelling): on the GPU when the machine has
one with room for them beside the training jobs, else on the CPU, saying why.

ADAPT_PREDICT_DEVICE picks: `auto` (default: the GPU when it can take the model), `cpu`, or `cuda`
(the GPU, still falling back to the CPU with a message when it cannot). The GPU is shared with the
worker by plan: a training job is planned for the GPU's free memory less `reservation()` (what a
predictor not loaded yet will need), and a predictor is placed on the GPU only when its estimate
(adapt.planner.inference_estimate) fits what is free. A predictor that runs out of GPU memory in
the middle of a request finishes it on the CPU and stays there (`run`).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from app.gpus import gpu_count

ENV = "ADAPT_PREDICT_DEVICE"
CHOICES = ("auto", "cpu", "cuda")
CACHE_BYTES = 512 * 2**20  # the click predictor's embedding cache, at most, in GPU memory
CACHE_ENTRIES = 8  # ... and in entries (the CPU's bound)

_on_gpu: set[int] = set()  # ids of backbones this process placed on the GPU
_lock = threading.Lock()


@dataclass
class Placement:
    device: str  # "cpu" or "cuda"
    note: str  # what the page says about it ("" when there is nothing to say)


def choice() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENV} must be one of {', '.join(CHOICES)}, not {value!r}")
    return value


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def place(backbone, name: str) -> Placement:
    """Put `backbone` (an adapt Backbone, on the CPU) where it should run; returns where it is."""
    wanted = choice()
    if wanted == "cpu":
        return Placement("cpu", "")
    if not gpu_count():
        note = "" if wanted == "auto" else f"{ENV}=cuda, but no GPU is visible: running on the CPU"
        return Placement("cpu", note)
    import torch

    from adapt.preflight import inference_estimate, memory_size

    need = inference_estimate(name, cache=cache_entries(name, "cuda"))
    try:
        free, _ = torch.cuda.mem_get_info()
        if free < need:
            return Placement(
                "cpu",
                f"running on the CPU: the GPU has {memory_size(free)} free and this model needs about {memory_size(need)} "
                "(training jobs have it)",
            )
        backbone.to("cuda")
    except (RuntimeError, AssertionError) as e:  # CUDA errors (out of memory included) are RuntimeErrors
        backbone.to("cpu")
        return Placement("cpu", f"running on the CPU: the GPU could not take the model ({_first_line(e)})")
    with _lock:
        _on_gpu.add(id(backbone))
    return Placement("cuda", "on the GPU")


def run(fn, backbone, placement: Placement):
    """fn(device) on the placement's device; a GPU out-of-memory moves the model to the CPU for good
    (updating `placement`) and runs fn there."""
    if placement.device == "cpu":
        return fn("cpu")
    import torch

    try:
        return fn(placement.device)
    except torch.cuda.OutOfMemoryError as e:
        backbone.to("cpu")
        torch.cuda.empty_cache()
        with _lock:
            _on_gpu.discard(id(backbone))
        placement.device = "cpu"
        placement.note = f"moved to the CPU: the GPU ran out of memory ({_first_line(e)})"
        return fn("cpu")


def release(backbone) -> None:
    """Forget a placed backbone the app no longer holds (its memory goes when it is collected)."""
    with _lock:
        _on_gpu.discard(id(backbone))


def cache_entries(name: str, device: str) -> int:
    """How many image embeddings the click predictor keeps: CACHE_ENTRIES, fewer on the GPU when
    they would pass CACHE_BYTES."""
    if device == "cpu":
        return CACHE_ENTRIES
    from adapt.preflight import embedding_bytes

    return max(1, min(CACHE_ENTRIES, CACHE_BYTES // embedding_bytes(name)))


def reservation(backbone: str) -> int:
    """GPU memory (bytes) a training job should leave for the app's predictors: a predictor's
    estimate for `backbone`, unless predictors run on the CPU by choice or one is on the GPU
    already (its memory is then no longer free, so planning for what is free accounts for it)."""
    if choice() == "cpu":
        return 0
    with _lock:
        if _on_gpu:
            return 0
    from adapt.preflight import inference_estimate

    return inference_estimate(backbone, cache=cache_entries(backbone, "cuda"))
