"""What a run is before it starts, decided once for the CLI (`python -m adapt train`) and the
studio (app/studio.py): the task options and evaluation cadence a new run gets when not told, and
the memory plan (micro-batch, accumulation, activation checkpointing) that makes it fit.

    cfg = TrainConfig(task=..., task_options=default_task_options(task), eval_every=eval_every(steps))
    plan = memory_plan(cfg, "16GB")           # None: nothing to plan for (the CPU, no budget)
    cfg = fit_to_plan(cfg, plan)              # ValueError with the plan's message when it cannot fit

A room beside adapt.pipeline (the use cases that run): these are the decisions made before one.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from adapt.planner import (  # noqa: F401  (re-exported: the estimates the studio shows)
    Plan,
    embedding_bytes,
    estimate,
    inference_estimate,
    make_plan,
    memory_size,
    parse_bytes,
)
from adapt.tasks import TASKS
from adapt.train import TrainConfig, resolve_precision

EVALUATIONS = 10  # evaluations during a run that keeps validation images aside, when not told


def eval_every(steps: int, validation: float = TrainConfig.validation) -> int:
    """How often a run evaluates when not told: EVALUATIONS times when it keeps validation images
    aside (the best evaluated state is the one saved, and the studio previews each), else only
    before and after (0)."""
    return max(1, steps // EVALUATIONS) if validation else 0


def default_task_options(task: str, **chosen) -> dict:
    """The task options a new run starts from (`configure` adds what the dataset determines): the
    task's declared defaults (Task.default_options, e.g. the prompt SAM trains with), with the
    caller's choices for the options the task has (a prompt given to a task that takes none is
    left out)."""
    defaults = TASKS[task].default_options
    return {**defaults, **{k: v for k, v in chosen.items() if k in defaults and v is not None}}


def memory_plan(
    cfg: TrainConfig, budget=None, *, gpus: int = 1, reserve: int | None = None, for_gpu: bool = False
) -> Plan | None:
    """The planner's choice (micro-batch, accumulation, activation checkpointing) for `cfg` on the
    device it trains on, each of `gpus` processes planning its share of the batch: for `budget`
    (bytes or text, "16GB"), or on a GPU for its free memory when none is given; None on the CPU
    without a budget. `reserve`: GPU memory another user of the GPU keeps (the studio's click
    predictor): the plan then fits the free memory less it, whatever the budget. `for_gpu`: plan for
    a GPU whatever this machine has (train --plan on a machine without one)."""
    device = cfg.resolved_device()
    limit = parse_bytes(budget) if budget is not None else None
    if device.type == "cuda" and (limit is None or reserve is not None):
        free = max(torch.cuda.mem_get_info(device)[0] - (reserve or 0), 0)
        limit = free if limit is None else min(limit, free)
    if limit is None:
        return None
    share = -(-cfg.batch_size // gpus)
    precision = resolve_precision(cfg, device)
    return make_plan(
        cfg.backbone,
        cfg.method,
        share,
        limit,
        precision,
        cfg.attention,
        "cuda" if for_gpu else device.type,
        **cfg.method_options,
    )


def fit_to_plan(cfg: TrainConfig, plan: Plan) -> TrainConfig:
    """`cfg` with the plan's accumulation and checkpointing (checkpointing stays on when asked
    for); a plan that does not fit is refused with its message (ValueError)."""
    if not plan.fits:
        raise ValueError(plan.describe())
    return replace(cfg, accumulate=plan.accumulate, checkpointing=cfg.checkpointing or plan.checkpointing)
