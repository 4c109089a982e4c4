"""The event log of a run folder: what happened, one JSON object per line in events.jsonl.

    log = EventLog(folder / EVENTS_NAME)
    log(Step(step=3, loss=0.41, lr=1e-3, grad_norm=0.8, images_per_s=5.2, eta_s=40.0))
    progress = Progress()
    for line in open(folder / EVENTS_NAME):
        progress.apply(parse(line))       # None (a line cut by a kill) is passed over

Written by the trainer (adapt.train) and the studio's label-the-rest job; read by the CLI's progress
bar, the studio's Progress tab and job status, and the benchmarks. This module owns the file name,
the event names and their fields (the dataclasses below: one per event, its `type` is the line's
"type"), the writer, the reader and the fold of events into progress, so a reader never spells an
event's name or field list itself. Every line also carries "time" (seconds since the epoch).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from adapt.files import write_text

EVENTS_NAME = "events.jsonl"
TYPE = "type"  # the key naming an event's kind on its line


# --- the events: a training run ----------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """A training run began (not written by a resumed one)."""

    type: ClassVar[str] = "start"
    config: dict  # the TrainConfig, as a dict
    counts: dict  # the method handle's parameter counts (adapter, head, trainable, base)
    train: int  # images trained on
    validation: int  # images kept aside to choose the best state
    heldout: int  # images scored frozen vs adapted
    device: str
    precision: str


@dataclass(frozen=True)
class Resumed:
    """A run continued from its checkpoint, taken after `step`."""

    type: ClassVar[str] = "resumed"
    step: int


@dataclass(frozen=True)
class WarmStart:
    """The run starts from a saved adapter (TrainConfig.init_adapter)."""

    type: ClassVar[str] = "warm_start"
    step: int
    adapter: str


@dataclass(frozen=True)
class Step:
    """One optimizer step done."""

    type: ClassVar[str] = "step"
    step: int
    loss: float
    lr: float
    grad_norm: float | None
    images_per_s: float
    eta_s: float


@dataclass(frozen=True)
class Eval:
    """Scores of the model as it is at `step` ("frozen" is the base model, scored at step 0;
    "previous" a warm start's adapter as loaded, on the held-out split at step 0)."""

    type: ClassVar[str] = "eval"
    step: int
    split: str  # "validation" (chooses the best state) | "heldout" (reported)
    model: str  # "frozen" | "previous" | "adapted"
    metrics: dict


@dataclass(frozen=True)
class OutOfMemory:
    """A step ran out of GPU memory and is redone in smaller micro-batches."""

    type: ClassVar[str] = "oom"
    step: int
    accumulate: int
    message: str


@dataclass(frozen=True)
class Error:
    """The run stopped with a message saying why and what to try."""

    type: ClassVar[str] = "error"
    step: int
    message: str


@dataclass(frozen=True)
class EarlyStop:
    """`patience` evaluations without a better validation score: the run stops early."""

    type: ClassVar[str] = "early_stop"
    step: int
    best_step: int
    patience: int


@dataclass(frozen=True)
class BestCheckpoint:
    """The state the run returns: the best by its validation images, from `best_step`."""

    type: ClassVar[str] = "best_checkpoint"
    step: int
    best_step: int
    validation_score: float


@dataclass(frozen=True)
class Done:
    """A training run finished: the trainer's summary (adapt.train.train), without its status."""

    type: ClassVar[str] = "done"
    step: int
    best_step: int | None
    frozen: dict | None  # held-out scores
    adapted: dict | None
    warning: str | None  # the not-better-than-frozen sentence, when it has one
    initial: dict | None  # a warm start's scores before training
    precision: str
    accumulate: int
    peak_memory_mb: float
    counts: dict
    seconds: float
    previous: dict | None = None  # a warm start's adapter on the same held-out images, before training
    attention: str = "fused"  # the image encoder's attention: "fused" | "eager" (adapt.backbones.fused_attention)
    embedding_cache: dict | None = None  # computed / hits / in memory / spilled, when embeddings were cached


@dataclass(frozen=True)
class Cancelled(Done):
    """A training run stopped when asked (checkpointed; it can resume)."""

    type: ClassVar[str] = "cancelled"


ENDINGS = (Done.type, Cancelled.type, Error.type)  # how a run ends: a resumed run drops these


def ended(status: str, **summary) -> Done:
    """The last event of a training run whose summary has this status ("done" | "cancelled")."""
    return {Done.type: Done, Cancelled.type: Cancelled}[status](**summary)


# --- the events: a label-the-rest job (the same names where they mean the same) ----------------


@dataclass(frozen=True)
class LabellingStart:
    """A labelling job began: `images` to label with `model` (an adapter, or the frozen backbone)."""

    type: ClassVar[str] = "start"
    images: int
    model: str
    backbone: str


@dataclass(frozen=True)
class Labelled:
    """One more image labelled: `step` of `total` done."""

    type: ClassVar[str] = "labelled"
    step: int
    total: int
    name: str  # the image's file name
    eta_s: float


@dataclass(frozen=True)
class LabellingDone:
    """The labelling job finished: `step` images done, `failed` of them unreadable."""

    type: ClassVar[str] = "done"
    step: int
    failed: int


@dataclass(frozen=True)
class LabellingCancelled:
    """The labelling job stopped when asked (it resumes where it was)."""

    type: ClassVar[str] = "cancelled"
    step: int


# --- writing -------------------------------------------------------------------------------------


class EventLog:
    """Appends events to a run folder's events.jsonl (`path` None: none written) and shows each to
    `echo` (the CLI's progress bar)."""

    def __init__(self, path: Path | None, echo: Callable[[dict], None] | None = None):
        self.path, self.echo = path, echo

    def __call__(self, event) -> dict:
        record = {TYPE: event.type, "time": round(time.time(), 3), **asdict(event)}
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.echo is not None:
            self.echo(record)
        return record

    def rewind(self, step: int) -> None:
        """Drop the events a resumed run will repeat: everything after the step its checkpoint was
        taken at (steps, evaluations, and how the interrupted run ended). The file is rewritten
        atomically; a half-written last line (a kill mid-write) goes too."""
        if self.path is None or not self.path.exists():
            return
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if (event := parse(line)) is not None and event.get("step", 0) <= step and kind(event) not in ENDINGS
        ]
        write_text(self.path, "".join(line + "\n" for line in kept))


# --- reading -------------------------------------------------------------------------------------


def parse(line: str | bytes) -> dict | None:
    """One line's event, or None for a line cut by a kill (or anything else that is not one)."""
    try:
        event = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return event if isinstance(event, dict) else None


def kind(event: dict) -> str | None:
    """An event's name (Step.type, Eval.type, ...)."""
    return event.get(TYPE)


# --- the fold into progress ------------------------------------------------------------------------


@dataclass
class Progress:
    """Where a run or labelling job stands, folded from its events in order."""

    steps: list = field(default_factory=list)  # (step, loss)
    evals: list = field(default_factory=list)  # (step, model, metrics, split)
    step: int = 0  # steps done (a labelling job: images done)
    eta_s: float | None = None
    last_loss: float | None = None
    frozen: dict | None = None  # the frozen model's held-out scores
    previous: dict | None = None  # a warm start's adapter's held-out scores, before this run trained it
    adapted: dict | None = None  # the returned model's held-out scores, once done
    warning: str | None = None  # the run's not-better-than-frozen sentence, when it has one
    best_step: int | None = None  # the step whose state the run returned (by its validation images)

    def apply(self, event: dict) -> None:
        """Fold one more event in (None, an unreadable line: nothing)."""
        name = kind(event) if event is not None else None
        if name == Step.type:
            self.steps.append((event["step"], event["loss"]))
            self.step, self.eta_s, self.last_loss = event["step"], event.get("eta_s"), event["loss"]
        elif name == Labelled.type:
            self.step, self.eta_s = event["step"], event.get("eta_s")
        elif name == Eval.type:
            split = event.get("split") or "heldout"
            self.evals.append((event["step"], event.get("model"), event.get("metrics", {}), split))
            if event.get("model") in ("frozen", "previous") and split == "heldout":
                setattr(self, event["model"], event.get("metrics"))
        elif name == BestCheckpoint.type:
            self.best_step = event.get("best_step")
        elif name in (Done.type, Resumed.type):
            self.step = event.get("step", self.step)
            if name == Done.type:
                self.adapted, self.eta_s, self.warning = event.get("adapted"), 0, event.get("warning")
