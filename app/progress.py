"""A job's progress, read from the events.jsonl its trainer writes (one JSON object per line)."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

from app.config import JobFiles

LOG_LINES = 40
METRICS = ("iou", "dice", "miou", "pixel_acc")  # what the held-out chart draws


@dataclass
class Progress:
    steps: list = field(default_factory=list)  # (step, loss)
    evals: list = field(default_factory=list)  # (step, model, metrics, split)
    log: list = field(default_factory=list)  # human-readable lines
    step: int = 0
    eta_s: float | None = None
    last_loss: float | None = None
    frozen: dict | None = None
    adapted: dict | None = None
    warning: str | None = None  # the run's not-better-than-frozen sentence, when it has one
    best_step: int | None = None  # the step whose state the run returned (by its validation images)
    signature: tuple = ()  # changes whenever the file does

    def curves(self) -> dict:
        """Rows for the loss and metric plots: the validation images' scores during training when
        the run keeps some aside (the held-out ones are then scored only at the end), else the
        held-out ones.

        A line needs two points, and a run scores the frozen model once: once the adapted model
        has been scored, the frozen score is drawn as a flat reference up to the latest adapted
        evaluation, and the adapted line starts from it at step 0 (every method is the identity at
        step 0, so the adapted model's step-0 score is the frozen one)."""
        loss = [{"step": s, "loss": v} for s, v in self.steps]
        split = "validation" if any(e[3] == "validation" for e in self.evals) else "heldout"
        evals = [e[:3] for e in self.evals if e[3] == split]
        frozen = next((m for _, model, m in evals if model == "frozen"), None)
        last = max((s for s, model, _ in evals if model == "adapted"), default=None)
        if frozen is not None and last:
            start = [] if any(s == 0 and model == "adapted" for s, model, _ in evals) else [(0, "adapted", frozen)]
            evals = [*start, *evals, (last, "frozen", frozen)]
        suffix = " (validation)" if split == "validation" else ""
        metric = [
            {"step": s, "score": float(m[k]), "series": f"{k} {model}{suffix}"}
            for s, model, m in sorted(evals, key=lambda e: (e[1], e[0]))
            for k in METRICS
            if isinstance(m.get(k), (int, float))
        ]
        return {"loss": loss, "metric": metric}


def _line(event: dict) -> str | None:
    kind = event.get("type")
    stamp = time.strftime("%H:%M:%S", time.localtime(event.get("time", 0)))
    if kind == "start" and "images" in event:  # a labelling job
        return f"{stamp} start: labelling {event['images']} images with {event.get('model')} on {event.get('backbone')}"
    if kind == "start":
        return (
            f"{stamp} start: {event.get('train')} training / {event.get('heldout')} held-out images on "
            f"{event.get('device')}, {event.get('counts', {}).get('trainable', 0):,} trainable parameters"
        )
    if kind == "step":
        return f"{stamp} step {event['step']}: loss {event['loss']:.4f}, lr {event['lr']:.2e}, eta {event.get('eta_s', 0):.0f} s"
    if kind == "eval":
        m = event.get("metrics", {})
        scores = ", ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float))
        where = "validation" if event.get("split") == "validation" else "held-out"
        return f"{stamp} {where} ({event.get('model')}) at step {event['step']}: {scores}"
    if kind == "early_stop":
        return f"{stamp} early stop at step {event['step']}: no better validation score in {event.get('patience')} evaluations"
    if kind == "best_checkpoint":
        return f"{stamp} best checkpoint: step {event.get('best_step')} (by the validation images)"
    if kind == "labelled":
        return None  # one per image: the status line shows the count
    if kind in ("done", "cancelled", "resumed", "error"):
        extra = event.get("message") or (f"at step {event.get('step')}" if "step" in event else "")
        return f"{stamp} {kind} {extra}".rstrip()
    return None


def _apply(p: Progress, raw: bytes) -> None:
    try:
        event = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):  # a line cut by a kill
        return
    kind = event.get("type")
    if kind == "step":
        p.steps.append((event["step"], event["loss"]))
        p.step, p.eta_s, p.last_loss = event["step"], event.get("eta_s"), event["loss"]
    elif kind == "labelled":  # a labelling job: images done so far
        p.step, p.eta_s = event["step"], event.get("eta_s")
    elif kind == "eval":
        split = event.get("split") or "heldout"
        p.evals.append((event["step"], event.get("model"), event.get("metrics", {}), split))
        if event.get("model") == "frozen" and split == "heldout":
            p.frozen = event.get("metrics")
    elif kind == "best_checkpoint":
        p.best_step = event.get("best_step")
    elif kind in ("done", "resumed"):
        p.step = event.get("step", p.step)
        if kind == "done":
            p.adapted, p.eta_s, p.warning = event.get("adapted"), 0, event.get("warning")
    line = _line(event)
    if line:
        p.log.append(line)


# Every poll of every client reads its job's progress: the parsed events are kept per file (as
# long as it is the same file, i.e. not rewritten by a resume) and only lines appended since the
# last read are parsed, so a status call costs a stat and a few lines, not the whole run.
_CACHE: OrderedDict[str, tuple[int, int, Progress]] = OrderedDict()  # path -> (inode, offset, progress)
_CACHE_SIZE = 256
_LOCK = threading.Lock()


def read_progress(folder: Path) -> Progress:
    """The progress of the job whose folder this is (an empty Progress when nothing is written yet).
    A line still being written (no newline yet) is left for the next read."""
    path = JobFiles(Path(folder)).events
    try:
        st = path.stat()
    except OSError:
        return Progress()
    key = str(path)
    with _LOCK:
        inode, offset, p = _CACHE.pop(key, (None, 0, None))
        if p is None or inode != st.st_ino or st.st_size < offset:  # new, or rewritten: from the start
            inode, offset, p = st.st_ino, 0, Progress()
        if st.st_size > offset:
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read(st.st_size - offset)
            end = chunk.rfind(b"\n") + 1
            for raw in chunk[:end].splitlines():
                _apply(p, raw)
            offset += end
        p.signature = (st.st_size, st.st_mtime_ns)
        _CACHE[key] = (inode, offset, p)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        log = p.log if len(p.log) <= LOG_LINES else p.log[:1] + ["..."] + p.log[-(LOG_LINES - 2) :]
        return replace(p, steps=list(p.steps), evals=list(p.evals), log=log)
