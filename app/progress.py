"""A job's progress as the studio shows it: adapt.events' fold of the job's events.jsonl, read
incrementally (every poll of every client asks), with the job log's lines and the charts' rows."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

from adapt.events import (
    ENDINGS,
    BestCheckpoint,
    EarlyStop,
    Eval,
    LabellingStart,
    Progress,
    Resumed,
    Start,
    Step,
    kind,
    parse,
)
from app.config import JobFiles

LOG_LINES = 40
METRICS = ("iou", "dice", "miou", "pixel_acc")  # what the held-out chart draws


@dataclass
class JobProgress(Progress):
    """A job's progress (adapt.events.Progress) with what the studio shows of it: the log lines
    and the charts' rows."""

    log: list = field(default_factory=list)  # human-readable lines
    heldout: int | None = None  # the run's held-out images (its Start event), to flag a split too small
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
    """The event as a line of the job's log (None: not shown there)."""
    name = kind(event)
    stamp = time.strftime("%H:%M:%S", time.localtime(event.get("time", 0)))
    if name == LabellingStart.type and "images" in event:
        return f"{stamp} start: labelling {event['images']} images with {event.get('model')} on {event.get('backbone')}"
    if name == Start.type:
        return (
            f"{stamp} start: {event.get('train')} training / {event.get('heldout')} held-out images on "
            f"{event.get('device')}, {event.get('counts', {}).get('trainable', 0):,} trainable parameters"
        )
    if name == Step.type:
        return f"{stamp} step {event['step']}: loss {event['loss']:.4f}, lr {event['lr']:.2e}, eta {event.get('eta_s', 0):.0f} s"
    if name == Eval.type:
        m = event.get("metrics", {})
        scores = ", ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float))
        where = "validation" if event.get("split") == "validation" else "held-out"
        return f"{stamp} {where} ({event.get('model')}) at step {event['step']}: {scores}"
    if name == EarlyStop.type:
        return f"{stamp} early stop at step {event['step']}: no better validation score in {event.get('patience')} evaluations"
    if name == BestCheckpoint.type:
        return f"{stamp} best checkpoint: step {event.get('best_step')} (by the validation images)"
    if name in (*ENDINGS, Resumed.type):  # (Labelled: one per image, the status line shows the count)
        extra = event.get("message") or (f"at step {event.get('step')}" if "step" in event else "")
        return f"{stamp} {name} {extra}".rstrip()
    return None


def _apply(p: JobProgress, raw: bytes) -> None:
    event = parse(raw)
    if event is None:  # a line cut by a kill
        return
    p.apply(event)
    if kind(event) == Start.type:
        p.heldout = event.get("heldout")
    line = _line(event)
    if line:
        p.log.append(line)


# Every poll of every client reads its job's progress: the parsed events are kept per file (as
# long as it is the same file, i.e. not rewritten by a resume) and only lines appended since the
# last read are parsed, so a status call costs a stat and a few lines, not the whole run.
_CACHE: OrderedDict[str, tuple[int, int, JobProgress]] = OrderedDict()  # path -> (inode, offset, progress)
_CACHE_SIZE = 256
_LOCK = threading.Lock()


def read_progress(folder: Path) -> JobProgress:
    """The progress of the job whose folder this is (an empty Progress when nothing is written yet).
    A line still being written (no newline yet) is left for the next read."""
    path = JobFiles(Path(folder)).events
    try:
        st = path.stat()
    except OSError:
        return JobProgress()
    key = str(path)
    with _LOCK:
        inode, offset, p = _CACHE.pop(key, (None, 0, None))
        if p is None or inode != st.st_ino or st.st_size < offset:  # new, or rewritten: from the start
            inode, offset, p = st.st_ino, 0, JobProgress()
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
