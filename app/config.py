"""Where the studio keeps its files, and the limits on what users may upload (all from the environment).

ADAPT_STUDIO_DIR     jobs database, job folders, uploads (default: /data/studio when /data is a
                     writable persistent volume, as on a Space, else ./studio)
ADAPT_MAX_UPLOAD_MB  largest single upload (default 200)
ADAPT_MAX_PIXELS     largest image, in pixels, checked from the file header (default 40 M)
ADAPT_MAX_IMAGES     most image/mask pairs in one dataset (default 500)
ADAPT_MAX_STEPS      most training steps one job may ask for (default 20000)
ADAPT_MAX_LABEL_IMAGES  most images one labelling job may take (default 2000)
ADAPT_SERVED_FILES_S how long a file the page hands out (a download, a checked dataset, a
                     prediction) stays readable at its URL, in seconds (default 3600)
ADAPT_WORKER_THREADS torch threads in each worker (default: all cores)
ADAPT_WORKERS        worker processes (default: one per GPU, one when there is none)
ADAPT_EXECUTOR       what runs the jobs: local (default) | ray | auto (app/run/executor.py); with ray:
                     RAY_ADDRESS, ADAPT_RAY_CPUS (CPUs per job on a CPU cluster, default 1),
                     ADAPT_RAY_MAX_JOBS (default: the cluster's GPUs, or CPUs / ADAPT_RAY_CPUS)
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from adapt.events import EVENTS_NAME
from adapt.files import write_text
from adapt.pipeline import ADAPTER_DIR, CHECKPOINT_NAME


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def default_root() -> Path:
    if os.environ.get("ADAPT_STUDIO_DIR"):
        return Path(os.environ["ADAPT_STUDIO_DIR"]).expanduser()
    data = Path("/data")
    if data.is_dir() and os.access(data, os.W_OK):
        return data / "studio"
    return Path("studio").resolve()


@dataclass(frozen=True)
class Limits:
    upload_mb: int = 200
    max_pixels: int = 40_000_000
    max_images: int = 500
    max_steps: int = 20_000
    label_images: int = 2000  # images in one label-the-rest job
    active_jobs: int = 3  # queued + running jobs per owner
    owner_storage_mb: int = 2048  # uploads + job folders per owner
    retention_days: float = 7.0  # finished jobs and uploads older than this are removed (0: never)
    served_files_s: int = 3600  # a file handed to the browser is removed from Gradio's cache after this

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            upload_mb=_int("ADAPT_MAX_UPLOAD_MB", cls.upload_mb),
            max_pixels=_int("ADAPT_MAX_PIXELS", cls.max_pixels),
            max_images=_int("ADAPT_MAX_IMAGES", cls.max_images),
            max_steps=_int("ADAPT_MAX_STEPS", cls.max_steps),
            label_images=_int("ADAPT_MAX_LABEL_IMAGES", cls.label_images),
            active_jobs=_int("ADAPT_MAX_ACTIVE_JOBS", cls.active_jobs),
            owner_storage_mb=_int("ADAPT_OWNER_STORAGE_MB", cls.owner_storage_mb),
            retention_days=float(os.environ.get("ADAPT_RETENTION_DAYS") or cls.retention_days),
            served_files_s=_int("ADAPT_SERVED_FILES_S", cls.served_files_s),
        )

    @property
    def served_files(self) -> tuple[int, int]:
        """Gradio's delete_cache (every how many seconds, older than how many): what the page
        hands out, and what users upload, lives this long at its URL (README, "Who can read what")."""
        return max(1, self.served_files_s // 6), self.served_files_s


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def db(self) -> Path:
        return self.root / "jobs.sqlite"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def job_dir(self, job_id: str) -> Path:
        return self.jobs / job_id

    def job_files(self, job_id: str) -> JobFiles:
        return JobFiles(self.job_dir(job_id))

    def owner_uploads(self, owner: str) -> Path:
        """An owner's uploads: checked dataset zips, loaded adapters, the labelled set."""
        return self.uploads / owner

    def uploaded_adapters(self, owner: str) -> Path:
        return self.owner_uploads(owner) / "adapters"

    def checked_dataset(self, owner: str, ref: str) -> Path:
        """A dataset the studio checked for this owner, by its id (what /check_data answers and
        /train takes): kept in the owner's own folder, so another browser's id finds nothing."""
        return self.owner_uploads(owner) / "datasets" / f"{ref}.zip"

    def labelled_set(self, owner: str) -> Path:
        """The owner's click-labelled pairs, a standard images/ + masks/ dataset folder."""
        return self.owner_uploads(owner) / "labelset"

    def labelled_set_zip(self, owner: str) -> Path:
        return self.owner_uploads(owner) / "labelset.zip"

    def labelstudio(self, owner: str, connection: str) -> LabelStudioFiles:
        """One Label Studio connection's files (app/lsbackend.py), in its owner's folder."""
        return LabelStudioFiles(self.owner_uploads(owner) / "labelstudio" / connection)

    def labelstudio_connections(self, connection: str) -> list[Path]:
        """The folders of every owner's connection with this id (one, or none)."""
        return sorted(self.uploads.glob(f"*/labelstudio/{connection}"))

    def ensure(self) -> Paths:
        for p in (self.root, self.jobs, self.uploads, self.logs):
            p.mkdir(parents=True, exist_ok=True)
        return self

    def browser_secret(self) -> str:
        """The key BrowserState encrypts with: kept on disk so a restarted app still reads what
        browsers stored (their owner token and job id)."""
        path = self.root / "browser-secret"
        if not path.exists():
            write_text(path, secrets.token_urlsafe(32), mode=0o600)
        return path.read_text().strip()


@dataclass(frozen=True)
class JobFiles:
    """Every file in one job's folder, named here once. The trainer's and the adapter's own names
    (events, checkpoint, adapter folder) come from the library that writes them."""

    folder: Path

    data_zip = property(lambda self: self.folder / "data.zip")  # the job's copy of its dataset
    events = property(lambda self: self.folder / EVENTS_NAME)  # one JSON event per line
    checkpoint = property(lambda self: self.folder / CHECKPOINT_NAME)  # resumes an interrupted job
    adapter = property(lambda self: self.folder / ADAPTER_DIR)  # the adapter folder
    adapter_zip = property(lambda self: self.folder / "adapter.zip")  # what Download gives
    merged = property(lambda self: self.folder / "merged.safetensors")  # made on first request
    result = property(lambda self: self.folder / "result.json")  # the trainer's summary
    # held-out previews (ground truth | prediction): frozen, latest, final
    before = property(lambda self: self.folder / "before.png")
    preview = property(lambda self: self.folder / "preview.png")
    after = property(lambda self: self.folder / "after.png")

    # a label-the-rest job: its images (extracted in the worker), adapt.batch's output, the download
    inputs = property(lambda self: self.folder / "inputs")
    inputs_zip = property(lambda self: self.folder / "inputs.zip")
    labels = property(lambda self: self.folder / "labels")
    labels_zip = property(lambda self: self.folder / "labels.zip")
    init_adapter = property(lambda self: self.folder / "init_adapter.zip")  # a retrain job's starting adapter

    @staticmethod
    def predictions(picture: Path) -> Path:
        """The predictions-only strip beside a preview picture (the before/after slider's halves)."""
        return picture.with_name(f"{picture.stem}_pred.png")


# the files of a job folder that the job only reads: app.run.mirror sends them to a remote executor's
# node with the job, and never back
JOB_INPUTS = tuple(
    getattr(JobFiles(Path()), name).name for name in ("data_zip", "inputs_zip", "inputs", "init_adapter")
)


@dataclass(frozen=True)
class LabelStudioFiles:
    """A Label Studio connection's folder: its settings and state, the API token when the user
    chose to keep it on disk, and the pairs its annotations made (a standard dataset folder)."""

    folder: Path

    settings = property(lambda self: self.folder / "connection.json")
    token = property(lambda self: self.folder / "token")  # only with keep_token "disk" (mode 0600)
    pairs = property(lambda self: self.folder / "pairs")  # images/ + masks/ (+ classes.json)
    index = property(lambda self: self.folder / "pairs.json")  # stem -> Label Studio task and annotation
    rounds = property(lambda self: self.folder / "rounds")  # the training datasets made from the pairs
