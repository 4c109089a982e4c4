"""One trainer for every task and method: a loop a reader can hold in their head.

    result = train(TrainConfig(...), train_samples, heldout_samples, out_dir)

- Parameter groups from the method's handle: adapter (lr), coefficients (lr x the method's scale),
  head (head_lr); AdamW; linear warm-up then cosine decay; gradient clipping; AMP (bf16) on CUDA.
- Exact resume: every random draw of step k comes from generators seeded with (seed, k), so a run
  stopped after k steps and resumed from its checkpoint repeats the uninterrupted run's steps.
  Checkpoints (adapter tensors + optimizer state + step) are written atomically every
  `checkpoint_every` steps and on cancel.
- Events (adapt.events): one JSON object per line in events.jsonl (step, loss, lr, throughput,
  eta; held-out metrics; done / cancelled / error), which the CLI shows as a progress bar and the
  app reads.
- A non-finite loss stops the run with a message saying at which step and what to try.
- Cancellation: `should_stop()` is checked between steps.
- The frozen model is scored on the held-out split before the first step (every method is the
  identity at step 0), and the adapted model after the last, so both figures come from one run.
- With validation images, the best evaluated state is the one returned (BestState).
- Data parallel (adapt.distributed): every rank runs this loop on its share of each batch; rank 0
  writes, evaluates and checkpoints (Run.ranks).
"""

from __future__ import annotations

import errno
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from adapt.backbones import build_backbone
from adapt.data.augment import augment
from adapt.distributed import ranks
from adapt.embedding_cache import DEFAULT_VIEWS, EmbeddingCache, ViewBank
from adapt.events import (
    EVENTS_NAME,
    BestCheckpoint,
    EarlyStop,
    Error,
    Eval,
    EventLog,
    OutOfMemory,
    Resumed,
    Start,
    Step,
    WarmStart,
    ended,
)
from adapt.files import atomic_path, remove_parts
from adapt.methods import attach
from adapt.metrics import main_score, not_better_warning
from adapt.tasks import Task, make_task
from adapt.weights import resolve_checkpoint

CHECKPOINT_NAME = "checkpoint.pt"


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
    attention: str = "fused"  # SAM ViT's attention: "fused" (exact, no N x N matrix) | "eager" (the reference)
    embedding_cache: bool = True  # frozen image encoder: each embedding computed once (adapt.embedding_cache)
    cache_views: int = DEFAULT_VIEWS  # with the cache and augmentation: fixed augmented views per image
    compile: bool = False  # torch.compile each encoder block (GPU; the first steps compile; ZeroGPU forbids it)
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
    model: str  # "frozen" | "previous" (a warm start's adapter, before training) | "adapted"
    final: bool  # the frozen score or the last adapted one (not an intermediate)
    metrics: dict
    run: Run
    samples: list


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
    backbone = build_backbone(cfg.backbone, checkpoint=checkpoint, seed=cfg.seed, attention=cfg.attention)
    task = make_task(cfg.task, backbone, **cfg.task_options)
    return backbone, task, attach(backbone, cfg.method, **cfg.method_options)


class Run:
    """Everything a training run holds: backbone + method handle + task + optimizer."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.ranks = ranks()  # this process's place in a data-parallel run (rank 0 of 1 alone)
        if cfg.batch_size < self.ranks.size:
            raise TrainingError(
                f"a batch of {cfg.batch_size} cannot be shared by {self.ranks.size} processes: raise the batch size"
            )
        self.device = cfg.resolved_device()
        self.backbone, self.task, self.handle = build_model(cfg)
        if cfg.accumulate < 1 or cfg.accumulate > cfg.batch_size:
            raise TrainingError(
                f"accumulate must be between 1 and the batch size ({cfg.batch_size}), not {cfg.accumulate}"
            )
        if cfg.cache_views < 1:
            raise TrainingError(f"cache_views must be at least 1, not {cfg.cache_views}")
        if cfg.checkpointing:
            self.backbone.set_checkpointing(True)
        if cfg.compile:  # in place: parameter names, state dicts and the methods' wrappers unchanged
            for block in self.backbone.blocks():
                block.compile()
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
        self.views: ViewBank | None = None  # the training images' fixed views, with the embedding cache

    def encoder_frozen(self) -> bool:
        """Nothing the image embedding depends on trains (the task can cache embeddings)."""
        encoder = getattr(self.backbone, "encoder_parameters", None)
        if encoder is None or not hasattr(self.task, "embedding_cache") or self.handle.adapter_parameters():
            return False
        return not any(p.requires_grad for p in encoder())

    def start_cache(self, train_samples, out: Path | None) -> EmbeddingCache | None:
        """The embedding cache in front of a frozen encoder (unless the config turns it off); the
        training images then come from a fixed bank of views."""
        if not (self.cfg.embedding_cache and self.encoder_frozen()):
            return None
        spill = out / ".embeddings" if out is not None else Path(tempfile.mkdtemp(prefix="embeddings-"))
        cache = EmbeddingCache(self.task.encode, spill_dir=spill)
        self.task.embedding_cache = cache
        cfg = self.cfg
        self.views = ViewBank(train_samples, self.task, cfg.cache_views, cfg.seed, cfg.augment, cache, self.device)
        return cache

    def stop_cache(self, cache: EmbeddingCache | None) -> dict | None:
        if cache is None:
            return None
        self.task.embedding_cache, self.views = None, None
        stats = cache.stats()
        cache.close()
        return stats

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


def _step_gradients(run: Run, train_samples, log: EventLog) -> torch.Tensor:
    """The gradients of one optimizer step, left in .grad; returns the step's loss.

    Gradient accumulation: the step's batch in `run.accumulate` micro-batches, each loss weighted
    by its share of the batch, so the summed gradient is the whole batch's (the tasks' losses are
    means over samples; prompts come from the same generator in the same order). A CUDA
    out-of-memory error halves the micro-batch (doubles the accumulation) and redoes the step from
    its start, at most MAX_OOM_RETRIES times, saying so in the log; then the run stops with a
    TrainingError (as it does on a non-finite loss). Nothing is lost: the optimizer has not moved."""
    cfg = run.cfg
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.precision)
    for attempt in range(MAX_OOM_RETRIES + 1):
        prepared, rng = _batch(train_samples, run.step, cfg, run.task, run.views)  # the same draws on a retry
        torch.manual_seed(cfg.seed * 1_000_003 + run.step)  # dropout etc.: a function of the step
        run.optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=run.device)
        share = run.ranks.share(prepared)  # data parallel: this rank's images of the step's batch
        try:
            for part in _micro_batches(share, min(run.accumulate, len(share))):
                with torch.autocast(
                    device_type=run.device.type, dtype=dtype or torch.float32, enabled=dtype is not None
                ):
                    part_loss = run.task.loss(part, rng, run.device) * (len(part) / len(prepared))
                if not torch.isfinite(part_loss):
                    msg = (
                        f"the loss became {part_loss.item()} at step {run.step + 1}; nothing was saved as an adapter. "
                        f"Try a lower learning rate (now {cfg.lr:g}, head {cfg.head_lr:g}) or check the masks."
                    )
                    log(Error(step=run.step, message=msg))
                    raise TrainingError(msg)
                (run.scaler.scale(part_loss) if run.scaler is not None else part_loss).backward()
                loss = loss + part_loss.detach()
            if not run.ranks.alone:
                run.ranks.sum([p for g in run.groups for p in g["params"]], loss)
            return loss
        except torch.cuda.OutOfMemoryError:
            if not run.ranks.alone:  # the other ranks are waiting in all_reduce: no retry that they would miss
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
                log(Error(step=run.step, message=msg))
                raise TrainingError(msg) from None
            run.accumulate = min(len(prepared), run.accumulate * 2)
            message = (
                f"out of memory at step {run.step + 1}: retrying it in micro-batches of "
                f"{-(-len(prepared) // run.accumulate)} (accumulation {run.accumulate})"
            )
            log(OutOfMemory(step=run.step, accumulate=run.accumulate, message=message))
    raise AssertionError("unreachable")


def _optimizer_step(run: Run, train_samples, log: EventLog) -> tuple[float, float | None]:
    """One step: gradients, clipping (of the unscaled gradients), the optimizer; returns the
    step's loss and the gradient norm (None without clipping)."""
    loss = _step_gradients(run, train_samples, log)
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)  # clip the true gradients
    params = [p for g in run.groups for p in g["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, run.cfg.clip_grad) if run.cfg.clip_grad else None
    if run.scaler is not None:
        run.scaler.step(run.optimizer)  # skipped when the scaled gradients overflowed
        run.scaler.update()
    else:
        run.optimizer.step()
    run.step += 1
    return round(loss.item(), 6), None if grad_norm is None else round(float(grad_norm), 4)


def _micro_batches(prepared: list, pieces: int) -> list[list]:
    """`prepared` in `pieces` consecutive parts of near-equal size (none empty)."""
    size = -(-len(prepared) // pieces)
    return [prepared[i : i + size] for i in range(0, len(prepared), size)]


def _batch(samples, step: int, cfg: TrainConfig, task: Task, views: ViewBank | None = None):
    """The step's prepared images (from the view bank when embeddings are cached) and the step's
    generator, after the draws that chose them."""
    rng = _step_rng(cfg.seed, step)
    idx = rng.choice(len(samples), size=cfg.batch_size, replace=len(samples) < cfg.batch_size)
    if views is not None:
        return [views.get(int(i), views.draw(rng)) for i in idx], rng
    prepared = []
    for i in idx:
        image, mask = samples[i].image, samples[i].mask
        if cfg.augment:
            image, mask = augment(image, mask, rng, **task.augment_options)
        prepared.append(task.prepare(image, mask))
    return prepared, rng


class BestState:
    """Which state a run returns. With validation images, the best-scoring of the states evaluated
    (the frozen one included: every method is the identity at its initialisation) and how many
    evaluations have passed since it; without, the last. It also keeps the frozen model's held-out
    scores once known. All of it goes into the checkpoint, so a resumed run chooses alike."""

    def __init__(self, run: Run, validating: bool, saved: dict):
        self.validating = validating
        selection = saved.get("selection") or {"frozen_state": run.handle.state_dict(), "best": None, "since_best": 0}
        self.frozen_state, self.best, self.since_best = (selection[k] for k in ("frozen_state", "best", "since_best"))
        self.frozen_metrics = saved.get("frozen_metrics")
        self.previous_metrics = saved.get("previous_metrics")  # a warm start's adapter on the held-out split

    def saved(self) -> dict:
        selection = {"frozen_state": self.frozen_state, "best": self.best, "since_best": self.since_best}
        return {
            "frozen_metrics": self.frozen_metrics,
            "previous_metrics": self.previous_metrics,
            "selection": selection,
        }

    def consider(self, metrics: dict | None, run: Run) -> None:
        """Keep the run's current state when its validation score is the best so far."""
        if not self.validating or metrics is None:
            return
        score = main_score(metrics)
        if self.best is None or score > self.best["score"]:
            self.best = {"score": score, "step": run.step, "state": run.handle.state_dict()}
            self.since_best = 0
        else:
            self.since_best += 1

    def patience_spent(self, patience: int) -> bool:
        """`patience` evaluations without a better validation score (0: never)."""
        return bool(patience) and self.validating and self.since_best >= patience

    def restore(self, run: Run) -> int:
        """Load the best state into the run (when it is not the current one); returns its step."""
        if self.best["step"] != run.step:
            run.handle.load_state_dict(self.best["state"])
        return self.best["step"]


class Checkpoint:
    """The run's checkpoint file (no file without a run folder): every rank reads it on resume,
    rank 0 writes it (atomically)."""

    def __init__(self, out: Path | None, run: Run):
        self.path = out / CHECKPOINT_NAME if out is not None else None
        self.run = run

    def load(self) -> dict:
        """The saved state, loaded into the run ({} when there is none)."""
        if self.path is None or not self.path.exists():
            return {}
        state = torch.load(self.path, map_location=self.run.device, weights_only=True)
        self.run.load(state)
        return state

    def save(self, best: BestState) -> None:
        if self.path is not None and self.run.ranks.lead:
            _atomic_torch_save({**self.run.state(), **best.saved()}, self.path)


class Scorer:
    """Scores samples with the model as it is, logs the scores and shows them to `on_eval`; only
    rank 0 evaluates (other ranks get None). `watched` are what the evaluations during training
    score: the validation images when the run keeps some aside, else the held-out ones."""

    def __init__(self, run: Run, log: EventLog, on_eval, validation: list, heldout: list):
        self.run, self.log, self.on_eval = run, log, on_eval
        self.watched, self.split = (validation, "validation") if validation else (heldout, "heldout")
        self.heldout = heldout

    def __call__(self, which: str, samples: list, split: str, final: bool = True) -> dict | None:
        """Scores of `which` model ("frozen" | "adapted"); DIS metrics only on the final scores
        (~0.5 s a 1024^2 image)."""
        run = self.run
        step = 0 if which == "frozen" else run.step
        if not run.ranks.lead or not samples:
            return None
        run.backbone.model.eval()
        metrics = run.task.evaluate(samples, device=run.device, dis=final)
        self.log(Eval(step=step, split=split, model=which, metrics=metrics))
        if self.on_eval is not None and which != "previous":  # the previews show frozen vs adapted
            self.on_eval(Evaluated(step, which, final, metrics, run, list(samples)))
        return metrics

    def watch(self, which: str, final: bool = False) -> dict | None:
        return self(which, self.watched, self.split, final)


def _score_start(run: Run, best: BestState, score: Scorer, log: EventLog) -> dict | None:
    """Before the first step: the frozen model on the watched images (a validation score is a
    candidate for the best state; a held-out one is the frozen figure), then a warm start's loaded
    adapter, whose state replaces the frozen one as the first candidate and which is scored on the
    held-out split too (the "previous" figure a retraining round is compared with: the gain of
    this round, where "frozen" is the base model's). Returns the warm start's watched score."""
    cfg = run.cfg
    if run.step == 0 and best.best is None and best.frozen_metrics is None:
        first = score.watch("frozen", final=not best.validating)
        if best.validating:
            best.consider(first, run)
        else:
            best.frozen_metrics = first  # no validation split: the curve is the held-out one
    if not cfg.init_adapter or run.step != 0:
        return None
    run.warm_start(cfg.init_adapter)
    log(WarmStart(step=0, adapter=str(cfg.init_adapter)))
    initial = score.watch("adapted")
    best.previous_metrics = score("previous", score.heldout, "heldout")
    best.best = None  # the run continues the loaded adapter: its state is the first candidate
    best.consider(initial, run)
    return initial


def _score_end(
    run: Run, best: BestState, score: Scorer, log: EventLog, heldout: list
) -> tuple[dict | None, int | None]:
    """After the last step: the last state competes with the best validated one, which the run
    keeps; then the held-out split, read now for the first time when validating, frozen and
    adapted. Returns (adapted held-out scores, the best state's step or None)."""
    run.backbone.model.eval()
    best_step = None
    if best.validating and run.ranks.lead:
        best.consider(score.watch("adapted"), run)
        best_step = best.restore(run)
        log(BestCheckpoint(step=run.step, best_step=best_step, validation_score=round(best.best["score"], 6)))
    if heldout and best.frozen_metrics is None:
        kept = run.handle.state_dict()
        run.handle.load_state_dict(best.frozen_state)
        best.frozen_metrics = score("frozen", heldout, "heldout")
        run.handle.load_state_dict(kept)
    return score("adapted", heldout, "heldout"), best_step


def _run_folder(out_dir, run: Run) -> Path | None:
    """The run folder (None: none); rank 0 makes it and removes the temporary files of a run that
    was killed mid-write."""
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and run.ranks.lead:
        out.mkdir(parents=True, exist_ok=True)
        remove_parts(out)
    return out


def _steps(
    run: Run, train_samples, checkpoint: Checkpoint, best: BestState, score: Scorer, log: EventLog, should_stop
) -> str:
    """The optimizer steps from run.step to the last (checkpoints, evaluations during training,
    early stopping): "done", or "cancelled" when `should_stop()` said so between steps."""
    cfg = run.cfg
    started, first_step = time.time(), run.step
    while run.step < cfg.steps and run.optimizer is not None:
        if should_stop():
            checkpoint.save(best)
            return "cancelled"
        run.backbone.model.train()
        lr = cfg.lr * run.set_lr()
        try:
            loss, grad_norm = _optimizer_step(run, train_samples, log)
        except TrainingError:  # a non-finite loss, or out of memory: the steps done are kept
            checkpoint.save(best)
            raise
        per_step = (time.time() - started) / (run.step - first_step)
        throughput = {
            "images_per_s": round(cfg.batch_size / per_step, 3),
            "eta_s": round(per_step * (cfg.steps - run.step), 1),
        }
        log(Step(step=run.step, loss=loss, lr=lr, grad_norm=grad_norm, **throughput))
        if cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0 and run.step < cfg.steps:
            checkpoint.save(best)
        if cfg.eval_every and run.step % cfg.eval_every == 0 and run.step < cfg.steps:
            best.consider(score.watch("adapted"), run)
            # (not in a data-parallel run: only rank 0 evaluates, and every rank must stop together)
            if run.ranks.alone and best.patience_spent(cfg.patience):
                log(EarlyStop(step=run.step, best_step=best.best["step"], patience=cfg.patience))
                break
    return "done"


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
    run = Run(cfg)
    lead = run.ranks.lead  # in a data-parallel run, rank 0 writes events and checkpoints and evaluates
    out = _run_folder(out_dir, run)
    log = EventLog(out / EVENTS_NAME if out and lead else None, echo if lead else None)
    checkpoint = Checkpoint(out, run)
    saved = checkpoint.load() if resume else {}
    validation_samples, heldout_samples = list(validation_samples), list(heldout_samples)
    best = BestState(run, bool(validation_samples), saved)
    score = Scorer(run, log, on_eval, validation_samples, heldout_samples)
    if saved:
        log.rewind(run.step)  # each step shows once in curves, ETA and the log
        log(Resumed(step=run.step))
    else:
        counts, device = run.handle.count(), str(run.device)
        sizes = {"train": len(train_samples), "validation": len(validation_samples), "heldout": len(heldout_samples)}
        log(Start(config=asdict(cfg), counts=counts, **sizes, device=device, precision=run.precision))
    cache = run.start_cache(train_samples, out)  # None unless the image encoder is frozen
    try:
        initial_metrics = _score_start(run, best, score, log)
        started = time.time()
        status = _steps(run, train_samples, checkpoint, best, score, log, should_stop)
        adapted_metrics, best_step = None, None
        if status == "done":
            adapted_metrics, best_step = _score_end(run, best, score, log, heldout_samples)
            checkpoint.save(best)
    finally:
        cache_stats = run.stop_cache(cache)
    summary = {
        "status": status,
        "step": run.step,
        "best_step": best_step,
        "frozen": best.frozen_metrics,
        "previous": best.previous_metrics,
        "adapted": adapted_metrics,
        "warning": not_better_warning(best.frozen_metrics, adapted_metrics, cfg.lr, cfg.steps, cfg.method),
        "initial": initial_metrics,
        "precision": run.precision,
        "accumulate": run.accumulate,
        "attention": run.backbone.attention,
        "embedding_cache": cache_stats,
        "peak_memory_mb": peak_memory_mb(run.device),
        "counts": run.handle.count(),
        "seconds": round(time.time() - started, 2),
    }
    log(ended(status, **{k: v for k, v in summary.items() if k != "status"}))
    summary["run"] = run
    return summary
