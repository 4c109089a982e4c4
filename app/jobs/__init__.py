"""Jobs: the store (one SQLite table, shared by the app and its workers), the control flags a
running job reads, and the kinds of job, one module each behind `JobKind`:

    store.py     JobStore: submit, claim, heartbeat, finish, retry (app.run's workers and the studio)
    control.py   Control (cancelled? stopping?) and the worker's Heartbeat
    kinds.py     the JobKind protocol: run, resume note, has-checkpoint, externals, brief
    train.py     "train": fine-tune an adapter (adapt.pipeline.train_adapter)
    label.py     "label": label the rest (adapt.batch.label_images)
    previews.py  the held-out previews a training job renders as it goes

Adding a kind is one module plus one line in KINDS.
"""

from app.jobs.kinds import BRIEF_KEYS, JobKind, UnknownKind
from app.jobs.label import LabelJob
from app.jobs.store import FINISHED, SCHEMA, STATUSES, JobStore, new_token
from app.jobs.train import TrainJob

KINDS: dict[str, JobKind] = {"train": TrainJob(), "label": LabelJob()}


def job_kind(job: dict) -> JobKind:
    """The kind that runs `job`; UnknownKind (the job fails with it) when this studio has none."""
    kind = KINDS.get(job["kind"])
    if kind is None:
        raise UnknownKind(f"this studio cannot run a {job['kind']!r} job (it runs: {', '.join(KINDS)})")
    return kind


def brief(job: dict) -> dict:
    """What a job is, whatever its kind: kind, task, backbone, method, and its length (steps; for
    a labelling job, images). A job of an unknown kind still shows, as that kind."""
    if job["kind"] not in KINDS:
        return {"kind": job["kind"], **dict.fromkeys(BRIEF_KEYS, "?"), "steps": 0}
    return {"kind": job["kind"], **KINDS[job["kind"]].brief(job["config"])}


__all__ = [
    "FINISHED",
    "KINDS",
    "SCHEMA",
    "STATUSES",
    "JobKind",
    "JobStore",
    "UnknownKind",
    "brief",
    "job_kind",
    "new_token",
]
