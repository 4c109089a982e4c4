"""One trainer for every task and method: a loop a reader can hold in their head.

    result = train(TrainConfig(...), train_samples, heldout_samples, out_dir)

- Parameter groups from the method's handle: adapter (lr), coefficients (lr x the method's scale),
  head (head_lr); AdamW; linear warm-up then cosine decay; gradient clipping; AMP (bf16) on CUDA.
- Exact resume: every random draw of step k comes from generators seeded with (seed, k), so a run
  stopped after k steps and resumed from its checkpoint repeats the uninterrupted run's steps.
  Checkpoints (adapter tensors + optimizer state + step) are written atomically every
  `checkpoint_every` steps and on cancel.
- Events: one JSON object per line in events.jsonl (step, loss, lr, throughput, eta; held-out
  metrics; done / cancelled / error), which the CLI shows as a progress bar and the app reads.
- A non-finite loss stops the run with a message saying at which step and what to try.
- Cancellation: `should_stop()` is checked between steps.
- The frozen model is scored on the held-out split before the first step (every method is the
  identity at step 0), and the adapted model after the last, so both figures come from one run.
"""

from __future__ import annotations

import errno
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from adapt.backbones import build_backbone
from adapt.data.augment import augment
from adapt.files import atomic_path, remove_parts, write_text
from adapt.methods import attach
from adapt.metrics import main_score, not_better_warning
from adapt.tasks import Task, make_task
from adapt.weights import resolve_checkpoint

CHECKPOINT_NAME = "checkpoint.pt"
EVENTS_NAME = "events.jsonl"


class TrainingError(RuntimeError):
    """Training stopped for a reason the user can act on; the message says which."""


@dataclass
class TrainConfig:
    task: str = "dichotomous"
    backbone: str = "tiny-sam"
    checkpoint: str | None = None  # base weights file or "random"; None: the bundled/official default
    method: str = "parser"
    method_options: dict = field(default_factory=dict)
    task_options: dict = field(default_factory=dict)
    steps: int = 100
    batch_size: int = 2
    lr: float = 1e-3
    head_lr: float = 1e-4
    weight_decay: float = 0.0
    warmup: int = 10
    clip_grad: float = 1.0
    amp: bool = True  # mixed precision on a GPU (see `precision`); False: fp32 everywhere
    precision: str = "auto"  # "auto" (bf16 where the GPU has it, fp16 + loss scaling where not, fp32 on CPU) | "bf16" | "fp16" | "fp32"
    augment: bool = True
    seed: int = 0
    eval_every: int = 0  # 0: only before and after
    checkpoint_every: int = 50
    device: str = "auto"
    init_adapter: str | None = None  # warm start: continue from this adapter (see adapt.pipeline.warm_start)
    accumulate: int = 1  # micro-batches per optimizer step: batch_size images in `accumulate` pieces
    checkpointing: bool = False  # activation checkpointing of the encoder blocks (Backbone.set_checkpointing)
    validation: float = 0.2  # share of the training images kept aside to choose the best checkpoint (0: none)
    patience: int = 0  # early stopping: evaluations without a better validation score (0: never stop early)

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


PRECISIONS = ("auto", "bf16", "fp16", "fp32")
MAX_OOM_RETRIES = 2


def resolve_precision(cfg: TrainConfig, device: torch.device) -> str:
    """The autocast precision a run uses: bf16 on GPUs that support it, fp16 (with a gradient
    scaler) on those that do not (T4, V100), fp32 on the CPU; an explicit choice is kept. The
    methods' SVD / Cayley / orthogonality maths stay fp32 under any of them (Float32Module)."""
    if cfg.precision not in PRECISIONS:
        raise TrainingError(f"precision must be one of {', '.join(PRECISIONS)}, not {cfg.precision!r}")
    if not cfg.amp:
        return "fp32"
    if cfg.precision != "auto":
        return cfg.precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def peak_memory_mb(device: torch.device) -> float:
    """The measured peak so far: allocated GPU memory on CUDA, else the process's peak resident
    size (which includes the Python and torch runtime, about 0.8 GiB)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)  # bytes on macOS, KiB on Linux


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class Evaluated:
    """What `train(on_eval=...)` sees after a held-out evaluation: when, which model, its scores,
    and the live run (task, handle, device) with the samples it was scored on."""

    step: int
    model: str  # "frozen" | "adapted"
    final: bool  # the frozen score or the last adapted one (not an intermediate)
    metrics: dict
    run: Run
    samples: list


class EventLog:
    def __init__(self, path: Path | None, echo: Callable[[dict], None] | None = None):
        self.path, self.echo = path, echo

    def rewind(self, step: int) -> None:
        """Drop the events a resumed run will repeat: everything after the step its checkpoint was
        taken at (steps, evaluations, and how the interrupted run ended). The file is rewritten
        atomically; a half-written last line (a kill mid-write) goes too."""
        if self.path is None or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("step", 0) <= step and event.get("type") not in ("done", "cancelled", "error"):
                kept.append(line)
        write_text(self.path, "".join(line + "\n" for line in kept))

    def __call__(self, kind: str, **fields):
        event = {"type": kind, "time": round(time.time(), 3), **fields}
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(event) + "\n")
        if self.echo is not None:
            self.echo(event)
        return event


def _atomic_torch_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # our handle: closed (and freed) on failure
        try:
            torch.save(obj, f)
        except RuntimeError as e:  # torch's writer reports a short write as a RuntimeError
            if shutil.disk_usage(path.parent).free < 64 << 20:
                raise OSError(errno.ENOSPC, f"no space left on the device writing {path.name}") from e
            raise


def _step_rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, step])


def build_model(cfg: TrainConfig):
    """(backbone, task, method handle) exactly as a run builds them, seeded so that heads and
    adapters initialise identically wherever this is called (the trainer, the studio's previews)."""
    torch.manual_seed(cfg.seed)
    checkpoint = resolve_checkpoint(cfg.backbone, cfg.checkpoint)  # "random": random init
    backbone = build_backbone(cfg.backbone, checkpoint=checkpoint, seed=cfg.seed)
    task = make_task(cfg.task, backbone, **cfg.task_options)
    return backbone, task, attach(backbone, cfg.method, **cfg.method_options)


class Run:
    """Everything a training run holds: backbone + method handle + task + optimizer."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.device = cfg.resolved_device()
        self.backbone, self.task, self.handle = build_model(cfg)
        if cfg.accumulate < 1 or cfg.accumulate > cfg.batch_size:
            raise TrainingError(
                f"accumulate must be between 1 and the batch size ({cfg.batch_size}), not {cfg.accumulate}"
            )
        if cfg.checkpointing:
            self.backbone.set_checkpointing(True)
        self.precision = resolve_precision(cfg, self.device)
        self.accumulate = cfg.accumulate  # doubled by an out-of-memory retry (see `train`)
        self.backbone.to(self.device)
        lrs = {"adapter": cfg.lr, "coefficients": cfg.lr, "head": cfg.head_lr}
        self.groups = [
            {
                "params": g.params,
                "lr": lrs[g.kind] * g.lr_scale,
                "base_lr": lrs[g.kind] * g.lr_scale,
                "weight_decay": cfg.weight_decay if g.decay else 0.0,
                "name": g.kind,
            }
            for g in self.handle.trainable_groups()
        ]
        self.optimizer = torch.optim.AdamW(self.groups, weight_decay=cfg.weight_decay) if self.groups else None
        # fp16 gradients underflow without loss scaling; bf16 and fp32 need none
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.step = 0

    def warm_start(self, path: str) -> None:
        """Load a saved adapter's tensors (same method, options and base model, checked) as the
        starting point; the optimizer starts afresh."""
        from adapt.export import AdapterError, check_compatible, read_adapter

        saved, tensors = read_adapter(path)
        check_compatible(saved, self.backbone, self.cfg.method)
        if saved.get("config") != self.handle.config.to_dict():
            raise AdapterError(
                f"the adapter to start from has options {saved.get('config')}, this run "
                f"{self.handle.config.to_dict()}: train with the adapter's options"
            )
        self.handle.load_state_dict(tensors)

    def set_lr(self) -> float:
        f = lr_factor(self.step, self.cfg.warmup, self.cfg.steps)
        for g in self.groups:
            g["lr"] = g["base_lr"] * f
        return f

    def state(self) -> dict:
        return {
            "step": self.step,
            "adapter": self.handle.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else {},
            "config": asdict(self.cfg),
        }

    def load(self, state: dict) -> None:
        self.handle.load_state_dict(state["adapter"])
        if self.optimizer and state["optimizer"]:
            self.optimizer.load_state_dict(state["optimizer"])
            self.groups = self.optimizer.param_groups  # load_state_dict replaces the group dicts
        self.step = state["step"]


def world() -> tuple[int, int]:
    """(rank, world size) of a data-parallel run (adapt.distributed), (0, 1) otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce_gradients(run: Run) -> None:
    """Sum every trainable gradient over the ranks: each rank computed its share of the batch,
    weighted by its share, so the sum is the whole batch's gradient on every rank."""
    import torch.distributed as dist

    for group in run.groups:
        for p in group["params"]:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)


def _step_gradients(run: Run, train_samples, log: EventLog, save_checkpoint) -> torch.Tensor:
    """The gradients of one optimizer step, left in .grad; returns the step's loss.

    Gradient accumulation: the step's batch in `run.accumulate` micro-batches, each loss weighted
    by its share of the batch, so the summed gradient is the whole batch's (the tasks' losses are
    means over samples; prompts come from the same generator in the same order). A CUDA
    out-of-memory error halves the micro-batch (doubles the accumulation) and redoes the step from
    its start, at most MAX_OOM_RETRIES times, saying so in the log; then the run stops with a
    message. Nothing is lost: the optimizer has not moved."""
    cfg = run.cfg
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.precision)
    rank, size = world()
    for attempt in range(MAX_OOM_RETRIES + 1):
        prepared, rng = _batch(train_samples, run.step, cfg, run.task)  # the same draws on a retry
        torch.manual_seed(cfg.seed * 1_000_003 + run.step)  # dropout etc.: a function of the step
        run.optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=run.device)
        share = prepared[rank::size]  # data parallel: this rank's images of the step's batch
        try:
            for part in _micro_batches(share, min(run.accumulate, len(share))):
                with torch.autocast(
                    device_type=run.device.type, dtype=dtype or torch.float32, enabled=dtype is not None
                ):
                    part_loss = run.task.loss(part, rng, run.device) * (len(part) / len(prepared))
                if not torch.isfinite(part_loss):
                    save_checkpoint()
                    msg = (
                        f"the loss became {part_loss.item()} at step {run.step + 1}; nothing was saved as an adapter. "
                        f"Try a lower learning rate (now {cfg.lr:g}, head {cfg.head_lr:g}) or check the masks."
                    )
                    log("error", step=run.step, message=msg)
                    raise TrainingError(msg)
                (run.scaler.scale(part_loss) if run.scaler is not None else part_loss).backward()
                loss = loss + part_loss.detach()
            if size > 1:
                import torch.distributed as dist

                _all_reduce_gradients(run)
                dist.all_reduce(loss)
            return loss
        except torch.cuda.OutOfMemoryError:
            if size > 1:  # the other ranks are waiting in all_reduce: no retry that they would miss
                raise
            run.optimizer.zero_grad(set_to_none=True)
            if run.device.type == "cuda":
                torch.cuda.empty_cache()
            micro = -(-len(prepared) // run.accumulate)
            if attempt == MAX_OOM_RETRIES or micro == 1:
                msg = (
                    f"out of GPU memory at step {run.step + 1} with micro-batches of {micro} image(s) "
                    f"(batch {cfg.batch_size}, accumulation {run.accumulate}, checkpointing "
                    f"{'on' if cfg.checkpointing else 'off'}, {run.precision}). Try activation checkpointing, a "
                    "smaller batch, a smaller backbone or a lighter method; the checkpoint keeps the steps done."
                )
                save_checkpoint()
                log("error", step=run.step, message=msg)
                raise TrainingError(msg) from None
            run.accumulate = min(len(prepared), run.accumulate * 2)
            log(
                "oom",
                step=run.step,
                accumulate=run.accumulate,
                message=f"out of memory at step {run.step + 1}: retrying it in micro-batches of "
                f"{-(-len(prepared) // run.accumulate)} (accumulation {run.accumulate})",
            )
    raise AssertionError("unreachable")


def _micro_batches(prepared: list, pieces: int) -> list[list]:
    """`prepared` in `pieces` consecutive parts of near-equal size (none empty)."""
    size = -(-len(prepared) // pieces)
    return [prepared[i : i + size] for i in range(0, len(prepared), size)]


def _batch(samples, step: int, cfg: TrainConfig, task: Task) -> tuple[list, np.random.Generator]:
    rng = _step_rng(cfg.seed, step)
    idx = rng.choice(len(samples), size=cfg.batch_size, replace=len(samples) < cfg.batch_size)
    prepared = []
    for i in idx:
        image, mask = samples[i].image, samples[i].mask
        if cfg.augment:
            image, mask = augment(image, mask, rng, **task.augment_options)
        prepared.append(task.prepare(image, mask))
    return prepared, rng


def train(
    cfg: TrainConfig,
    train_samples,
    heldout_samples,
    out_dir: str | Path | None = None,
    resume: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
    echo: Callable[[dict], None] | None = None,
    on_eval: Callable[[Evaluated], None] | None = None,
    validation_samples=(),
) -> dict:
    """Train, evaluate frozen vs adapted on the held-out samples, return a summary dict.

    With `validation_samples` (a split of the training data, see adapt.pipeline.train_adapter),
    the evaluations during training score them, the best of those states (the frozen one
    included) is the one returned, and `cfg.patience` evaluations without improvement stop the
    run early; the held-out samples are scored only at the end, frozen and adapted, so the figure
    reported was never used to choose anything. Without them, the evaluations during training
    score the held-out samples (a progress curve only) and the final state is returned.

    With `out_dir`, events and checkpoints go there (the adapter is saved by the caller,
    adapt.pipeline.train_adapter). `on_eval` sees the live model after every evaluation (the
    studio renders its previews from it, without a second copy of the model).
    """
    if not train_samples:
        raise TrainingError("no training samples")
    rank, size = world()
    lead = rank == 0  # in a data-parallel run, rank 0 writes events and checkpoints and evaluates
    if cfg.batch_size < size:
        raise TrainingError(f"a batch of {cfg.batch_size} cannot be shared by {size} processes: raise the batch size")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and lead:
        out.mkdir(parents=True, exist_ok=True)
    log = EventLog(out / EVENTS_NAME if out and lead else None, echo if lead else None)
    run = Run(cfg)
    ckpt_path = out / CHECKPOINT_NAME if out else None
    frozen_metrics = None
    if out is not None and lead:
        remove_parts(out)  # temporary files of a run that was killed mid-write
    state = {}
    if resume and ckpt_path is not None and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=run.device, weights_only=True)
        run.load(state)
        frozen_metrics = state.get("frozen_metrics")
        log.rewind(run.step)  # each step shows once in curves, ETA and the log
        log("resumed", step=run.step)
    else:
        log(
            "start",
            config=asdict(cfg),
            counts=run.handle.count(),
            train=len(train_samples),
            validation=len(validation_samples),
            heldout=len(heldout_samples),
            device=str(run.device),
            precision=run.precision,
        )
    model = run.backbone.model
    validation_samples = list(validation_samples)
    watched = validation_samples or list(heldout_samples)  # what the evaluations during training score
    watched_split = "validation" if validation_samples else "heldout"
    # the state the frozen model is (every method is the identity at its initialisation) and the
    # best validated one so far; kept in the checkpoint so that a resumed run chooses alike
    selection = state.get("selection") or {"frozen_state": run.handle.state_dict(), "best": None, "since_best": 0}

    def evaluate(which: str, samples, split: str, final: bool = True) -> dict | None:
        """Score `samples` now with the model as it is ("frozen" or "adapted"); DIS metrics only
        on the final scores (~0.5 s a 1024^2 image)."""
        step = 0 if which == "frozen" else run.step
        if not lead or not samples:
            return None
        model.eval()
        metrics = run.task.evaluate(samples, device=run.device, dis=final)
        log("eval", step=step, split=split, model=which, metrics=metrics)
        if on_eval is not None:
            on_eval(Evaluated(step, which, final, metrics, run, list(samples)))
        return metrics

    def consider(metrics: dict | None) -> None:
        """Keep the current state when its validation score is the best so far."""
        if not validation_samples or metrics is None:
            return
        score = main_score(metrics)
        best = selection["best"]
        if best is None or score > best["score"]:
            selection["best"] = {"score": score, "step": run.step, "state": run.handle.state_dict()}
            selection["since_best"] = 0
        else:
            selection["since_best"] += 1

    initial_metrics = None
    if run.step == 0 and selection["best"] is None and frozen_metrics is None:
        first = evaluate("frozen", watched, watched_split, final=not validation_samples)
        if validation_samples:
            consider(first)
        else:
            frozen_metrics = first  # no validation split: the curve is the held-out one, as before
    if cfg.init_adapter and run.step == 0:
        # warm start: the frozen state above is the base model's; the adapted curve starts from
        # the loaded adapter's score
        run.warm_start(cfg.init_adapter)
        log("warm_start", step=0, adapter=str(cfg.init_adapter))
        initial_metrics = evaluate("adapted", watched, watched_split, final=False)
        selection["best"] = None  # the run continues the loaded adapter: its state is the first candidate
        consider(initial_metrics)

    def save_checkpoint():
        if ckpt_path is not None and lead:
            _atomic_torch_save({**run.state(), "frozen_metrics": frozen_metrics, "selection": selection}, ckpt_path)

    started, first_step = time.time(), run.step
    status = "done"
    while run.step < cfg.steps and run.optimizer is not None:
        if should_stop():
            status = "cancelled"
            save_checkpoint()
            break
        model.train()
        lr_f = run.set_lr()
        loss = _step_gradients(run, train_samples, log, save_checkpoint)
        if run.scaler is not None:
            run.scaler.unscale_(run.optimizer)  # clip the true gradients
        grad_norm = (
            torch.nn.utils.clip_grad_norm_([p for g in run.groups for p in g["params"]], cfg.clip_grad)
            if cfg.clip_grad
            else None
        )
        if run.scaler is not None:
            run.scaler.step(run.optimizer)  # skipped when the scaled gradients overflowed
            run.scaler.update()
        else:
            run.optimizer.step()
        run.step += 1
        elapsed = time.time() - started
        per_step = elapsed / (run.step - first_step)
        log(
            "step",
            step=run.step,
            loss=round(loss.item(), 6),
            lr=cfg.lr * lr_f,
            grad_norm=None if grad_norm is None else round(float(grad_norm), 4),
            images_per_s=round(cfg.batch_size / per_step, 3),
            eta_s=round(per_step * (cfg.steps - run.step), 1),
        )
        if cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0 and run.step < cfg.steps:
            save_checkpoint()
        if cfg.eval_every and run.step % cfg.eval_every == 0 and run.step < cfg.steps:
            consider(evaluate("adapted", watched, watched_split, final=False))
            # (not in a data-parallel run: only rank 0 evaluates, and every rank must stop together)
            if cfg.patience and validation_samples and size == 1 and selection["since_best"] >= cfg.patience:
                log("early_stop", step=run.step, best_step=selection["best"]["step"], patience=cfg.patience)
                break
    adapted_metrics, best_step = None, None
    if status == "done":
        model.eval()
        if validation_samples and lead:  # the last state competes too; the best one is what the run returns
            consider(evaluate("adapted", watched, watched_split, final=False))
            best = selection["best"]
            best_step = best["step"]
            if best_step != run.step:
                run.handle.load_state_dict(best["state"])
            log("best_checkpoint", step=run.step, best_step=best_step, validation_score=round(best["score"], 6))
        if heldout_samples and frozen_metrics is None:  # the held-out split, read now for the first time
            kept = run.handle.state_dict()
            run.handle.load_state_dict(selection["frozen_state"])
            frozen_metrics = evaluate("frozen", heldout_samples, "heldout")
            run.handle.load_state_dict(kept)
        adapted_metrics = evaluate("adapted", heldout_samples, "heldout")
        save_checkpoint()
    summary = {
        "status": status,
        "step": run.step,
        "best_step": best_step,
        "frozen": frozen_metrics,
        "adapted": adapted_metrics,
        "warning": not_better_warning(frozen_metrics, adapted_metrics, cfg.lr, cfg.steps, cfg.method),
        "initial": initial_metrics,
        "precision": run.precision,
        "accumulate": run.accumulate,
        "peak_memory_mb": peak_memory_mb(run.device),
        "counts": run.handle.count(),
        "seconds": round(time.time() - started, 2),
    }
    log(status, **{k: v for k, v in summary.items() if k != "status"})
    summary["run"] = run
    return summary
