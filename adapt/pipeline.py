"""The use cases: what the CLI and the studio ask of the library, each spelled out once.

    train_adapter(cfg, dataset, out, gpus=1)  split, train (data parallel on gpus > 1), save OUT/adapter
    warm_start(cfg, adapter)                  cfg continuing from a saved adapter (the retrain step)
    interactive_predictor(backbone)           the click labeller's predictor
    evaluate_adapter(adapter, dataset)        frozen vs adapted scores on a dataset
    inference_task(adapter=... | backbone=...)  a task ready to predict, and the adapter's config
    count_params(backbone, method, **options) parameter counts on the real architecture, instantly
    encoder_shape(backbone)                   tokens, width and depth of the image encoder

What a run is before it starts (defaults, memory plan) is adapt.preflight's.

`python -m adapt` and the studio (its job runners and app/studio.py) call these and nothing below
them, so a change to what "train an adapter" means is made here once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from adapt.backbones import build_backbone, family_of
from adapt.counts import count_params, encoder_shape  # noqa: F401  (re-exported for the CLI and the studio)
from adapt.data import load_dataset
from adapt.distributed import ranks, run_data_parallel, stop_flag
from adapt.export import base_backbone, load_adapter, load_merged, read_adapter, save_adapter
from adapt.metrics import (  # noqa: F401  (what the studio shows)
    INTERVAL,
    METRIC_HELP,
    forgetting_report,
    forgetting_warning,
    small_split_warning,
    with_interval,
)
from adapt.predictor import InteractivePredictor
from adapt.tasks import attach_task_head, make_task, task_for_family, task_options
from adapt.train import CHECKPOINT_NAME, Evaluated, TrainConfig, TrainingError, train  # noqa: F401  (re-exported)
from adapt.weights import resolve_checkpoint

ADAPTER_DIR = "adapter"  # train_adapter writes OUT/adapter


def metric_record(frozen: dict | None, adapted: dict | None, previous: dict | None = None) -> dict:
    """Held-out scores under one naming for model cards and adapter configs: frozen_<m>, adapted_<m>
    (and previous_<m>: a warm start's adapter before this run, on the same held-out images); the
    numbers only (the intervals go to the card's data, heldout_scores)."""

    def numbers(prefix: str, scores: dict | None) -> dict:
        return {f"{prefix}_{k}": v for k, v in (scores or {}).items() if isinstance(v, (int, float))}

    record = numbers("frozen", frozen)
    record.update(numbers("previous", previous))
    record.update(numbers("adapted", adapted))
    return record


def heldout_report(frozen: dict | None, adapted: dict | None, heldout: int) -> dict:
    """What a run says of its held-out scores beside the numbers: the main metrics with their 95%
    bootstrap intervals over the images ("heldout_scores"), and a flag when the split is too small
    to trust ("heldout_warning", adapt.metrics.small_split_warning); a concept-segmentation run
    also says whether it forgot how to say no ("did_it_forget", "forgetting_warning")."""
    report = {}
    keys = [k for k in METRIC_HELP if k in (frozen or {}) and k in (adapted or {})][:2]  # iou, dice / miou, acc
    if keys:
        report["heldout_scores"] = (
            "; ".join(f"{k} {with_interval(frozen, k)} frozen -> {with_interval(adapted, k)} adapted" for k in keys)
            + f" (95% bootstrap intervals over the {heldout} held-out images)"
        )
    warning = small_split_warning(heldout)
    if warning:
        report["heldout_warning"] = warning
    forgot = forgetting_report(frozen, adapted)  # concept segmentation: did it forget how to say no?
    if forgot:
        report["did_it_forget"] = forgot
        report["forgetting_warning"] = forgetting_warning(frozen, adapted) or "none: no rise above 2 points"
    return report


def configure(cfg: TrainConfig, dataset) -> TrainConfig:
    """`cfg` with its task options completed from the dataset (classes, ignore index); options
    already in `cfg` (e.g. the prompt) are kept."""
    return replace(cfg, task_options=task_options(cfg.task, dataset, **cfg.task_options))


def warm_start(cfg: TrainConfig, adapter: str | Path, explicit: frozenset[str] | set[str] = frozenset()) -> TrainConfig:
    """`cfg` set to continue from `adapter` (folder or zip): its base model, method, method options
    and task, with `init_adapter` pointing at it. A field the caller chose itself (`explicit`: names
    among "backbone", "method", "task", "method_options") that disagrees with the adapter is refused
    with a message; everything else of `cfg` (steps, lrs, seed) is kept."""
    from adapt.export import AdapterError

    saved, _ = read_adapter(adapter)
    wanted = {
        "backbone": saved["base_model"]["name"],
        "method": saved["method"],
        "method_options": dict(saved.get("config") or {}),
        "task": saved.get("task") or task_for_family(family_of(saved["base_model"]["name"])),
    }
    for name in sorted(explicit):
        if name in wanted and getattr(cfg, name) not in (wanted[name], {}):
            raise AdapterError(
                f"the adapter to continue from is a {wanted['method']!r} adapter on {wanted['backbone']!r} for the "
                f"{wanted['task']} task; its {name} is {wanted[name]!r}, not {getattr(cfg, name)!r} "
                "(leave it out to take the adapter's)"
            )
    checkpoint = "random" if saved["base_model"].get("weights_id") == "random-init" else cfg.checkpoint
    return replace(cfg, **wanted, checkpoint=checkpoint, init_adapter=str(adapter))


def train_adapter(
    cfg: TrainConfig,
    dataset,
    out: str | Path,
    *,
    holdout=None,
    source: str | None = None,
    resume: bool = False,
    echo: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_eval: Callable[[Evaluated], None] | None = None,
    adapter: str | Path | None = None,
    gpus: int = 1,
) -> dict:
    """Split `dataset` (holdout: see Dataset.split), train `cfg` into `out` (events, checkpoint;
    `resume` continues from it) and, when training finished, save the adapter to OUT/adapter
    with the held-out scores and a data summary in its model card (`adapter`: another folder).

    `gpus` > 1: data parallel, one process each (adapt.distributed), each loading the dataset
    from where `dataset` was loaded (Dataset.origin); `should_stop` reaches them through a flag
    file, `on_eval` runs in rank 0 (it must pickle) and `echo` is not called (the events file has
    everything). A warm start (cfg.init_adapter, see `warm_start`) is recorded in the model card.
    Returns the trainer's summary (status, step, frozen, adapted, initial, counts, seconds) plus
    "adapter" (its folder, or None when the run was cancelled) and "train_images" /
    "heldout_images".
    """
    if gpus > 1:  # each process loads the dataset and runs the single-process path below
        if dataset.origin is None:
            raise ValueError("data-parallel training loads the dataset in each process: load it from a folder or zip")
        threads = max(1, torch.get_num_threads() // gpus)  # this process's threads, shared
        with stop_flag(out, should_stop) as flag:
            job = RankJob(
                cfg,
                dataset.origin,
                str(out),
                holdout=holdout,
                source=source,
                resume=resume,
                adapter=adapter,
                threads=threads,
                stop_file=flag,
                on_eval=on_eval,
            )
            return run_data_parallel(gpus, train_rank, job)[0]
    cfg = configure(cfg, dataset)
    train_set, heldout = dataset.split(holdout=holdout, seed=cfg.seed)
    train_samples, validation = validation_split(list(train_set), cfg.validation, cfg.seed)
    summary = train(
        cfg,
        train_samples,
        list(heldout),
        out,
        resume=resume,
        should_stop=should_stop or (lambda: False),
        echo=echo,
        on_eval=on_eval,
        validation_samples=validation,
    )
    run = summary.pop("run")
    summary.update(
        adapter=None, train_images=len(train_samples), validation_images=len(validation), heldout_images=len(heldout)
    )
    if summary["status"] != "done" or not ranks().lead:  # data parallel: rank 0 saves the adapter
        return summary
    data = {
        "source": source or str(dataset.source),
        "train_images": len(train_samples),
        "validation_images": len(validation),
        "heldout_images": len(heldout),
        "heldout_stems": ", ".join(s.stem for s in heldout),
        "steps": cfg.steps,
    }
    if summary.get("best_step") is not None:
        data["best_checkpoint"] = f"step {summary['best_step']} of {summary['step']} (by the validation images)"
    data["precision"] = summary["precision"]
    if summary["accumulate"] > 1 or cfg.checkpointing:
        data["memory"] = f"accumulation {summary['accumulate']}, checkpointing {'on' if cfg.checkpointing else 'off'}"
    if cfg.init_adapter:
        data["warm_start"] = Path(cfg.init_adapter).name
    report = heldout_report(summary["frozen"], summary["adapted"], len(heldout))
    summary.update(report)  # the job's result says it too
    data.update(report)
    summary["adapter"] = save_adapter(
        run.handle,
        Path(adapter) if adapter is not None else Path(out) / ADAPTER_DIR,
        task=cfg.task,
        classes=cfg.task_options.get("classes"),
        metrics=metric_record(summary["frozen"], summary["adapted"], summary.get("previous")),
        data=data,
    )
    return summary


@dataclass(frozen=True)
class RankJob:
    """What each process of a data-parallel `train_adapter` is given (it pickles): the dataset as
    load_dataset's arguments (each process loads its own copy), and a flag file in place of a
    callback for cancelling."""

    cfg: TrainConfig
    data: dict  # load_dataset(**data); "path" at least
    out: str
    holdout: object = None
    source: str | None = None
    resume: bool = False
    adapter: str | Path | None = None
    threads: int = 1
    stop_file: str | None = None
    on_eval: Callable[[Evaluated], None] | None = None  # rank 0's


def train_rank(rank: int, job: RankJob) -> dict | None:
    """One process of a data-parallel `train_adapter` (run by adapt.distributed.run_data_parallel);
    on a GPU machine, rank r trains on cuda:r. Returns rank 0's summary (others: None)."""
    torch.set_num_threads(job.threads)
    cfg = job.cfg
    if torch.cuda.is_available() and cfg.device in ("auto", "cuda"):
        cfg = replace(cfg, device=f"cuda:{rank}")
    stop_file = job.stop_file
    summary = train_adapter(
        cfg,
        load_dataset(**{"task": cfg.task, **job.data}),
        job.out,
        holdout=job.holdout,
        source=job.source,
        resume=job.resume,
        should_stop=(lambda: Path(stop_file).exists()) if stop_file else None,
        on_eval=job.on_eval if rank == 0 else None,
        adapter=job.adapter,
    )
    return summary if rank == 0 else None


# Training images below which none are kept aside: a choice made on one image is noise (on the
# README's 7-image example, one validation image chose step 10 of 100, whose held-out IoU was 0.18
# against the last step's 0.33), and each image counts more for training
MIN_VALIDATED = 10
MIN_VALIDATION_IMAGES = 2


def validation_split(samples: list, share: float, seed: int = 0) -> tuple[list, list]:
    """(training, validation) samples: `share` of the training images (at least
    MIN_VALIDATION_IMAGES) kept aside to choose the best checkpoint, when there are at least
    MIN_VALIDATED; otherwise none. Random choices depend only on `seed` and the stems; the
    held-out split is not involved."""
    if share <= 0 or len(samples) < MIN_VALIDATED:
        return list(samples), []
    if share >= 1:
        raise ValueError(f"the validation share must be below 1, not {share}")
    order = sorted(range(len(samples)), key=lambda i: samples[i].stem)
    rng = np.random.default_rng(seed + 7919)  # apart from the held-out split's draw
    rng.shuffle(order)
    n = min(len(samples) - 1, max(MIN_VALIDATION_IMAGES, round(share * len(samples))))
    chosen = set(order[:n])
    return [s for i, s in enumerate(samples) if i not in chosen], [s for i, s in enumerate(samples) if i in chosen]


def interactive_predictor(backbone: str, *, device="cpu", capacity: int = 8, download: bool = False):
    """The click labeller's predictor (adapt.predictor): the frozen `backbone` with its family's
    task, its weights already here unless `download`, on `device`, caching the image embeddings
    of `capacity` images."""
    model = build_backbone(backbone, checkpoint=resolve_checkpoint(backbone, download=download)).to(device)
    return InteractivePredictor(make_task(task_for_family(model.family), model), capacity=capacity, device=device)


def evaluate_adapter(adapter: str | Path, dataset, task: str | None = None, checkpoint=None, **overrides) -> dict:
    """{"images", "frozen", "adapted"}: the adapter's base model, then the adapter loaded onto it,
    on every sample of `dataset` with the same task options (overrides: e.g. prompt="none")."""
    cfg, _ = read_adapter(adapter)
    task_name = cfg.get("task") or task or task_for_family(family_of(cfg["base_model"]["name"]))
    samples = list(dataset)
    backbone = base_backbone(cfg, checkpoint)
    model = make_task(task_name, backbone, **task_options(task_name, dataset, **overrides))
    frozen = model.evaluate(samples)  # before the adapter (and its trained head) is loaded
    load_adapter(adapter, backbone=backbone)
    backbone.model.eval()
    adapted = model.evaluate(samples)
    return {"images": len(samples), "frozen": frozen, "adapted": adapted}


def inference_task(
    adapter=None, backbone: str | None = None, task: str | None = None, checkpoint=None, download: bool = True
):
    """(task, adapter config or None), ready to predict: an adapter (folder or zip) merged into its
    base model, with the task and classes it was trained for; a merged checkpoint (.safetensors
    written by export.save_merged) likewise; or, with no adapter, the frozen `backbone` with its
    task head (zero-shot). `task` is the fallback when the adapter names none, and the frozen
    model's task (default: the backbone family's)."""
    if adapter and Path(adapter).suffix == ".safetensors":
        model, info = load_merged(adapter)
        task = info.get("task") or task or task_for_family(model.family)
    elif adapter:
        handle = load_adapter(adapter, checkpoint=checkpoint)
        handle.merge()
        model, info = handle.backbone, handle.info
        task = info.get("task") or task
    else:
        if not backbone:
            raise ValueError("give an adapter, or a backbone to predict with the frozen model")
        model = build_backbone(backbone, checkpoint=resolve_checkpoint(backbone, checkpoint, download=download))
        attach_task_head(model)
        info, task = None, task or task_for_family(model.family)
    model.model.eval()
    options = {"classes": info.get("classes")} if info is not None and info.get("classes") else {}
    return make_task(task, model, **options), info


def export_onnx(adapter, out_dir, fp16: bool = False, classes: list[str] | None = None, checkpoint=None) -> Path:
    """Write the ONNX folder (adapt.onnx_graphs) for an adapter (folder or zip) merged into its base
    model, or a merged checkpoint; `classes` (CLIP) overrides the adapter's class list. Atomic: a
    failure leaves nothing behind."""
    from adapt.onnx_graphs import write_onnx  # onnx and onnxscript load only for an export

    task, info = inference_task(adapter=adapter, checkpoint=checkpoint)
    return write_onnx(task, out_dir, fp16=fp16, classes=classes, info=info)
