"""What the job runners ask of a kind of job ("train", "label", ...). Each kind is one module in
app/jobs/ with one class behind this protocol, registered in app.jobs.KINDS; the worker, the
supervisor, the executors and the status page ask the kind, never branch on its name."""

from __future__ import annotations

from typing import Literal, Protocol

from app.config import JobFiles
from app.jobs.control import Control

Ending = Literal["done", "cancelled", "stopped"]
BRIEF_KEYS = ("task", "backbone", "method", "steps")  # what kind.brief(config) gives, for the page


class UnknownKind(ValueError):
    """A job of a kind this studio does not run (a store written by another version): the job
    fails with this message; the runners go on."""


class JobKind(Protocol):
    name: str  # the store's `kind` column
    resume_note: str  # the job's note when it was stopped with the app; it resumes at the next start
    resumes: str  # what a failed job resumed by its owner continues from, in a sentence
    start_again: str  # where a failed job with nothing to resume from is started again, in a sentence

    def run(self, job: dict, files: JobFiles, control: Control, max_pixels: int) -> Ending:
        """Run the job in its folder to its end, with no job store: "done", "cancelled" (its
        owner asked) or "stopped" (the executor is stopping; what was done is kept and the job
        resumes from it). Errors raise."""

    def has_checkpoint(self, files: JobFiles) -> bool:
        """Whether the job left something to resume from (a job whose process died retries once)."""

    def externals(self, job: dict) -> list[str]:
        """The files outside the job's folder that it reads (they travel to a remote executor)."""

    def brief(self, config: dict) -> dict:
        """What the job is, in a line: its BRIEF_KEYS (steps: its length, in its own unit)."""
