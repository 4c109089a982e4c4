"""What the UI and the API ask of the library and the job store: the Studio and its request helpers.
The choices the page offers (tasks, backbones, methods) are app.catalog's.

Every user-facing failure is a `UserError` (app/checks.py, with the checks of every input) whose
message says what to do; the UI shows it in the page and gradio_client receives it as the error text.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path

import numpy as np

from adapt.files import copy_file, disk_full, format_bytes, zip_folder
from adapt.methods import methods_for
from adapt.pipeline import TrainConfig, forgetting_warning
from adapt.preflight import default_task_options, eval_every, fit_to_plan, memory_plan, parse_bytes
from adapt.tasks import TASKS
from app.catalog import backbone_for, check_text_prompt, family_for_task, fit_warning, has_gpu
from app.checks import (  # noqa: F401  (the app's modules import these from here)
    MAX_BOXES,
    MAX_CLASSES,
    MAX_CLICKS,
    MAX_ID,
    MAX_NAME,
    MAX_TEXT,
    TOKEN_RE,
    UserError,
    as_phrase,
    as_text,
    boxes_inside,
    boxes_taken,
    check_owner,
    choice,
    clicks_inside,
    file_list,
    flag,
    number,
    parse_boxes,
    parse_classes,
    parse_clicks,
    uploaded,
)
from app.config import Limits, Paths
from app.gpus import gpu_count
from app.jobs import FINISHED, JobStore, UnknownKind, brief, job_kind, new_token
from app.progress import read_progress

MAX_BUDGET_TEXT = 32  # characters in a memory budget ("24GB")
DATASET_REF = re.compile(r"dataset-[A-Za-z0-9_-]{16}")  # a checked dataset's id (Paths.checked_dataset)


def job_plan(
    backbone: str, method: str, batch_size: int, budget: str | None = None, options: dict | None = None, gpus: int = 1
):
    """The pre-flight plan (adapt.preflight.memory_plan) a job gets, or None when there is nothing
    to plan: on a GPU machine for the GPU's free memory less the app predictor's reservation,
    capped by `budget` when one is given; on a CPU-only machine only for a given `budget` (RAM,
    fp32). With `gpus`, for each GPU's share of the batch."""
    from app.placement import reservation

    text = as_text(budget, "the memory budget", MAX_BUDGET_TEXT).strip()
    try:
        limit = parse_bytes(text) if text else None
    except ValueError as e:
        raise UserError(f"memory budget: {e}") from None
    if limit is not None and limit < 1:
        raise UserError("memory budget: give a positive size, e.g. 16GB")
    gpu = has_gpu()
    cfg = TrainConfig(
        backbone=backbone,
        method=method,
        batch_size=batch_size,
        method_options=dict(options or {}),
        device="cuda" if gpu else "cpu",
    )
    return memory_plan(cfg, limit, gpus=gpus, reserve=reservation(backbone) if gpu else None)


def estimate_memory(backbone: str, method: str, batch_size: int, budget: str | None = None) -> str:
    """The Train tab's memory line: the plan the job would get (job_plan), or on a CPU-only machine
    without a budget the estimate for the batch as asked (in RAM, fp32)."""
    from adapt.preflight import estimate

    try:
        batch_size = number(batch_size, "batch size", 1, 64, integer=True)
        plan = job_plan(backbone, method, batch_size, budget)
        if plan is not None:
            where = "GPU memory plan" if has_gpu() else "Memory plan (this machine has no GPU: RAM, fp32)"
            text = f"{where}: {plan.describe()}" if plan.fits else f"**Will not fit.** {plan.describe()}"
            return text + (fit_warning(plan.estimate.total) if plan.fits else "")  # a budget over what is free
        e = estimate(backbone, method, batch_size, False, "fp32")
    except (ValueError, UserError, RuntimeError) as err:  # RuntimeError: a GPU that cannot be queried
        return f"Cannot estimate: {err}"
    return (
        f"Estimated RAM (no GPU: training runs on the CPU): **{format_bytes(e.total)}** (weights "
        f"{format_bytes(e.weights)}, gradients and optimizer state {format_bytes(e.trainable_state)}, activations "
        f"{format_bytes(e.activations)} at batch {batch_size}). A model of the step (adapt/planner.py), not a "
        "measurement: each run records its measured peak. Give a memory budget to plan for it."
    ) + fit_warning(e.total)


# --- the studio: datasets, jobs, adapters, prediction ---------------------------------------------


def summarize(dataset) -> str:
    s = dataset.summary()
    lines = [
        f"**{s['count']} image/mask pairs** ({s['task']}), "
        f"{s['width'][0]}-{s['width'][1]} x {s['height'][0]}-{s['height'][1]} px"
    ]
    if TASKS[s["task"]].mask.binary:
        lines.append(f"mean foreground fraction {s['foreground_fraction_mean']:.2f}")
    else:
        lines.append("classes: " + ", ".join(s["classes"]))
    if s["given_heldout"]:
        lines.append(f"held-out folder with {s['given_heldout']} pairs")
    if s["skipped"]:
        lines.append("skipped: " + "; ".join(s["skipped"][:5]))
    return "\n\n".join(lines)


class Studio:
    """The app's state on disk: the job store, uploaded datasets and adapters, and a small cache
    of loaded models for prediction."""

    def __init__(self, paths: Paths, limits: Limits | None = None):
        self.paths = paths.ensure()
        self.limits = limits or Limits.from_env()
        self.store = JobStore(paths.db)
        self._models: OrderedDict[tuple, object] = OrderedDict()
        self._models_lock = threading.Lock()
        self._seen: dict[str, float] = {}  # job -> when its owner last looked (written at most once a minute)

    # --- quotas and cleanup --------------------------------------------------------------------
    def usage(self, owner: str) -> int:
        """Bytes an owner's uploads and job folders take on disk."""
        folders = [self.paths.owner_uploads(owner)] + [self.paths.job_dir(j) for j in self.store.owner_jobs(owner)]
        return sum(f.stat().st_size for folder in folders if folder.exists() for f in folder.rglob("*") if f.is_file())

    @staticmethod
    def incoming_bytes(files) -> int:
        """What taking these uploaded files may put on disk: each file, plus what a zip among them
        unpacks to while it is checked or labelled (the archive guard never writes more than a
        zip declares), so many small entries count as what they become, not as the upload."""
        from adapt.archive import declared_size

        files = [Path(f) for f in files]
        return sum(f.stat().st_size + declared_size(f) for f in files if f.is_file())

    def check_storage(self, owner: str, adding: int = 0) -> None:
        """Refuse what would take the owner past their storage limit, saying what to remove."""
        limit = self.limits.owner_storage_mb << 20
        used = self.usage(owner)
        if used + adding > limit:
            raise UserError(
                f"this would take your storage to {format_bytes(used + adding)}, over the {format_bytes(limit)} "
                "each user has here: cancel or let old jobs expire, or use fewer or smaller uploads"
            )

    def check_active(self, owner: str) -> None:
        """Refuse a new job while the owner has as many queued or running as allowed."""
        active = self.store.active_count(owner)
        if active >= self.limits.active_jobs:
            raise UserError(
                f"you have {active} jobs queued or running; at most {self.limits.active_jobs} at once: "
                "wait for one to finish, or cancel one"
            )

    def clean(self, now: float | None = None) -> dict:
        """Remove finished jobs and uploads nobody has touched for the retention time (a job whose
        owner looked at it recently is kept); returns what was removed."""
        if self.limits.retention_days <= 0:
            return {"jobs": [], "uploads": []}
        before = (now or time.time()) - self.limits.retention_days * 86400
        jobs = self.store.expired(before)
        for job_id in jobs:
            shutil.rmtree(self.paths.job_dir(job_id), ignore_errors=True)
            self.store.delete(job_id)
        uploads = [f for f in self.paths.uploads.rglob("*") if f.is_file() and f.stat().st_mtime < before]
        for f in uploads:
            f.unlink(missing_ok=True)
        return {"jobs": jobs, "uploads": [str(f) for f in uploads]}

    # --- datasets ------------------------------------------------------------------------------
    def load_checked(self, path: Path, task: str):
        from adapt.data import DatasetError, load_dataset

        try:
            dataset = load_dataset(path, task=task, max_pixels=self.limits.max_pixels)
        except DatasetError as e:
            raise UserError(str(e)) from None
        n = len(dataset) + (len(dataset.given_heldout) if dataset.given_heldout else 0)
        if n > self.limits.max_images:
            raise UserError(f"the dataset has {n} image/mask pairs; this studio takes at most {self.limits.max_images}")
        if len(dataset) < 2 and not dataset.given_heldout:
            raise UserError(
                f"the dataset has {len(dataset)} image/mask pair(s); it needs at least 2 (one to train "
                "on and one held out to score frozen vs adapted)"
            )
        return dataset

    def stage_upload(
        self, owner: str, task: str, zip_file: str | None = None, images=(), masks=(), classes: str = ""
    ) -> tuple[Path, str]:
        """Validate uploaded pairs (a zip, or image files + mask files paired by name) and keep
        them as one dataset zip in the owner's folder, named after its id (checked_dataset finds
        it again); returns (zip path, summary). Nothing is kept on failure. What is unpacked while
        checking counts against the owner's storage quota, as does the zip kept."""
        check_owner(owner)
        family_for_task(task)  # a known task
        classes = as_text(classes, "the class list")
        images = [uploaded(f) for f in file_list(images, "image files", self.limits.max_images)]
        masks = [uploaded(f) for f in file_list(masks, "mask files", self.limits.max_images)]
        zip_file = uploaded(as_text(zip_file, "the dataset zip")) or None
        # a zip is kept and unpacked while checked; files are copied into a folder and kept zipped
        self.check_storage(
            owner, self.incoming_bytes([zip_file] if zip_file else []) + 2 * self.incoming_bytes(images + masks)
        )
        dest = self.paths.checked_dataset(owner, f"dataset-{new_token()[:16]}")
        if zip_file:
            if images or masks:
                raise UserError("give either a zip or image and mask files, not both")
            dataset = self.load_checked(Path(zip_file), task)
            summary = summarize(dataset)
            dataset.close()
            return copy_file(Path(zip_file), dest), summary
        if not images or not masks:
            raise UserError("upload a dataset zip, or image files and mask files (same names, e.g. cat.jpg + cat.png)")
        with tempfile.TemporaryDirectory(dir=self.paths.uploads) as tmp:
            folder = Path(tmp) / "dataset"
            for kind, files in (("images", images), ("masks", masks)):
                (folder / kind).mkdir(parents=True)
                for f in files:
                    name = Path(f).name
                    if (folder / kind / name).exists():
                        raise UserError(f"two {kind} files are named {name}")
                    shutil.copyfile(f, folder / kind / name)
            kind = TASKS[task].mask
            if kind.needs_class_names:
                kind.write_classes(folder, parse_classes(classes, background=True))
            dataset = self.load_checked(folder, task)
            summary = summarize(dataset)
            dataset.close()
            return zip_folder(folder, dest), summary

    def checked_dataset(self, owner: str, dataset) -> Path:
        """The owner's checked dataset that a request names: its id, or a file named after it (the
        copy /check_data handed out, as the page and gradio_client send it back). Only the copy in
        the owner's own folder is ever read, never the file sent: a path, or the id of a dataset
        another browser checked, is refused."""
        check_owner(owner)
        text = as_text(dataset, "the dataset", 1024).strip()
        if not text:
            raise UserError("no dataset: upload pairs or label images in the Data tab first, then check them there")
        name = Path(text).name
        ref = name.removesuffix(".zip")
        path = self.paths.checked_dataset(owner, ref)
        if not DATASET_REF.fullmatch(ref) or not path.is_file():
            raise UserError(
                f"{name!r} is not a dataset checked for this browser: check the data in the Data tab first "
                "(the API: /check_data answers the checked dataset that /train takes). A checked dataset "
                "belongs to the browser that checked it, and expires with its uploads"
            )
        return path

    # --- jobs ----------------------------------------------------------------------------------
    def submit(
        self,
        owner: str,
        dataset_zip: str | None,
        task: str,
        backbone: str,
        method: str,
        steps: int,
        lr: float,
        head_lr: float,
        batch_size: int = 2,
        seed: int = 0,
        options: dict | None = None,
        init_adapter: Path | None = None,
        memory_budget: str | None = None,
        gpus: int = 1,
        phrase: str | None = None,
        hard_negatives: bool = True,
    ) -> str:
        """Queue a training job on `dataset_zip`, a zip on this server (a request names one through
        checked_dataset, which only finds the owner's own); `init_adapter` (an adapter folder or
        zip the owner may use):
        a warm start from it, with its backbone, method and options (adapt.pipeline.warm_start);
        `memory_budget` ("16GB"): the job is planned to fit it (job_plan); `gpus`: data-parallel on
        that many GPUs (the supervisor gives the job a worker holding them). `phrase` and
        `hard_negatives`: task options, for the tasks that have them (the concept task: the phrase
        that names binary masks' object, absent-class prompts while training)."""
        from adapt.pipeline import configure, warm_start

        check_owner(owner)
        if not as_text(dataset_zip, "the dataset zip"):
            raise UserError("no dataset: upload pairs or label images in the Data tab first (or pass a dataset zip)")
        family = family_for_task(task)
        backbone = backbone_for(task, backbone)
        method = as_text(method, "method", MAX_ID)
        if method not in methods_for(family):
            raise UserError(f"{method!r} does not apply to {backbone}; choose one of {', '.join(methods_for(family))}")
        steps = number(steps, "steps", 1, self.limits.max_steps, integer=True)
        batch_size = number(batch_size, "batch size", 1, 64, integer=True)
        lr, head_lr = number(lr, "lr", 1e-12, 1), number(head_lr, "head lr", 0, 1)
        seed = number(seed, "seed", 0, 2**31 - 1, integer=True)
        gpus = number(gpus, "GPUs", 1, max(1, gpu_count()), integer=True)
        if options is not None and not isinstance(options, dict):
            raise UserError("method options must be an object of option names and values")
        chosen = {"phrase": as_phrase(phrase, "the phrase"), "hard_negatives": flag(hard_negatives, "hard negatives")}
        self.check_active(owner)
        self.check_storage(owner, Path(dataset_zip).stat().st_size if Path(dataset_zip).is_file() else 0)
        dataset = self.load_checked(Path(dataset_zip), task)  # validated before anything is queued
        dataset.close()
        every = eval_every(steps)  # the studio previews at each evaluation
        cfg = TrainConfig(
            task=task,
            backbone=backbone,
            method=method,
            method_options=dict(options or {}),
            task_options=default_task_options(task, **chosen),
            steps=steps,
            batch_size=batch_size,
            lr=float(lr),
            head_lr=float(head_lr),
            seed=int(seed),
            warmup=min(10, max(1, steps // 10)),
            eval_every=every,
            checkpoint_every=every,
        )
        try:
            cfg = configure(cfg, dataset)  # what the worker will run, classes included
        except ValueError as e:  # the task's own word on what the data lacks (binary masks: a phrase)
            raise UserError(str(e)) from None
        cfg = self._fit_to_plan(cfg, memory_budget, gpus)
        job_id = new_token()
        if init_adapter is not None:  # the job keeps its own copy: the source may expire first
            from adapt.export import AdapterError, zip_adapter

            start = self.paths.job_files(job_id).init_adapter
            start.parent.mkdir(parents=True, exist_ok=True)
            if Path(init_adapter).is_file():
                copy_file(Path(init_adapter), start)
            else:
                zip_adapter(init_adapter, start)
            try:
                cfg = warm_start(cfg, start, explicit={"task", "backbone", "method"})
            except AdapterError as e:
                shutil.rmtree(start.parent, ignore_errors=True)
                raise UserError(str(e)) from None
        data = copy_file(Path(dataset_zip), self.paths.job_files(job_id).data_zip)
        spec = {"train": asdict(cfg), "data_name": Path(dataset_zip).name, "gpus": gpus}
        self.store.submit(owner, spec, str(data), job_id=job_id)
        return job_id

    def _fit_to_plan(self, cfg, budget: str | None = None, gpus: int = 1):
        """The pre-flight plan (job_plan): the job gets the plan's accumulation and checkpointing
        (for each GPU's share of the batch), or is refused before it is queued, saying what would
        fit. On a CPU-only machine without a budget, the job runs as asked."""
        plan = job_plan(cfg.backbone, cfg.method, cfg.batch_size, budget, cfg.method_options, gpus)
        if plan is None:
            return cfg
        try:
            return fit_to_plan(cfg, plan)
        except ValueError as e:
            raise UserError(f"this job would not fit: {e}") from None

    def job(self, owner: str, job_id: str) -> dict:
        check_owner(owner)
        job = self.store.get(as_text(job_id, "the job id", MAX_ID).strip(), owner)
        if job is None:
            raise UserError("no such job for this browser (job ids are private to the browser that started them)")
        return job

    def status(self, owner: str, job_id: str) -> dict:
        """Everything a client needs to follow a job (JSON-serialisable)."""
        job = self.job(owner, job_id)
        now = time.time()
        if now - self._seen.get(job["id"], 0) > 60:  # kept from cleanup while its owner looks at it
            self._seen[job["id"]] = now
            try:
                self.store.seen(job["id"], now)
            except sqlite3.OperationalError:  # a full disk: reading a job's status must still work
                pass
        files = self.paths.job_files(job["id"])
        progress = read_progress(files.folder)
        result = {
            "job": job["id"],
            "status": job["status"],
            "error": job["error"],
            "note": job["note"],
            **brief(job),
            "step": progress.step,
            "loss": progress.last_loss,
            "eta_s": progress.eta_s,
            "frozen": progress.frozen,
            "previous": progress.previous,  # a retraining round: the adapter it continues, on the same images
            "adapted": progress.adapted,
            "best_step": progress.best_step,
            "warning": progress.warning,
            "forgetting": forgetting_warning(progress.frozen, progress.adapted),  # concept jobs: did it forget?
            "created": job["created"],
            "adapter_ready": job["status"] == "done" and files.adapter_zip.exists(),
            "labels_ready": job["status"] == "done" and files.labels_zip.exists(),
        }
        if job["status"] == "queued":
            result["queue_position"] = self.store.queue_position(job["id"])
        return result

    def jobs(self, owner: str) -> list[dict]:
        check_owner(owner)
        return [
            {
                "job": j["id"],
                "status": j["status"],
                **{k: v for k, v in brief(j).items() if k in ("kind", "method", "backbone")},
                "created": j["created"],
            }
            for j in self.store.list(owner)
        ]

    def cancel(self, owner: str, job_id: str) -> str:
        job = self.job(owner, job_id)
        if job["status"] in FINISHED:
            return f"job {job['id']} has already finished ({job['status']})"
        status = self.store.cancel(job["id"], owner)
        return "cancelled" if status == "cancelled" else "cancelling: the worker stops after its current step"

    def resume(self, owner: str, job_id: str) -> str:
        """A failed job back in the queue, resuming from what its kind kept (a training job's last
        checkpoint, a labelling job's ledger)."""
        job = self.job(owner, job_id)
        if job["status"] != "failed":
            return f"job {job['id']} is {job['status']}: only a failed job can be resumed"
        try:
            kind = job_kind(job)
        except UnknownKind as e:
            raise UserError(str(e)) from None
        if not kind.has_checkpoint(self.paths.job_files(job["id"])):
            raise UserError(f"job {job['id']} failed before it kept anything to resume from: {kind.start_again}")
        if not self.store.resume(job["id"], owner):
            return f"job {job['id']} is no longer failed"
        return f"queued again: {kind.resumes}"

    # --- adapters ------------------------------------------------------------------------------
    def adapter_zip(self, owner: str, job_id: str) -> Path:
        job = self.job(owner, job_id)
        path = self.paths.job_files(job["id"]).adapter_zip
        if job["status"] != "done" or not path.exists():
            raise UserError(f"job {job['id']} has no adapter yet (status: {job['status']})")
        return path

    def merged_checkpoint(self, owner: str, job_id: str) -> Path:
        """Base model + adapter folded into one .safetensors file (made once, then kept)."""
        from adapt.export import AdapterError, save_merged

        self.adapter_zip(owner, job_id)  # a finished job of this owner
        files = self.paths.job_files(job_id)
        if not files.merged.exists():
            try:
                save_merged(files.adapter, files.merged, source=job_id)
            except AdapterError as e:  # a method that cannot be folded: the reason, and what to use
                raise UserError(str(e)) from None
        return files.merged

    def upload_adapter(self, owner: str, zip_path: str) -> tuple[str, str]:
        """Check an adapter zip (safetensors only, never pickle) and keep it; returns (ref, description)."""
        from adapt.export import AdapterError, read_adapter

        check_owner(owner)
        if not uploaded(as_text(zip_path, "the adapter zip")):
            raise UserError("choose an adapter .zip to load")
        self.check_storage(owner, self.incoming_bytes([zip_path]))  # unpacked while it is read, then kept
        try:
            cfg, tensors = read_adapter(Path(zip_path))
        except (AdapterError, zipfile.BadZipFile, OSError) as e:
            if disk_full(e):  # the server's disk, not the user's zip: said as such (error_message)
                raise
            raise UserError(f"{Path(zip_path).name}: not a usable adapter: {e}") from None
        ref = f"upload-{new_token()[:16]}"
        copy_file(Path(zip_path), self.paths.uploaded_adapters(owner) / f"{ref}.zip")
        return ref, describe_adapter(cfg, len(tensors))

    def load_hub_adapter(self, owner: str, ref: str) -> tuple[str, str]:
        """Download an adapter from the Hugging Face Hub ("user/repo" or "hf://user/repo[@rev]") and
        keep it as this browser's upload (the same checks as a zip); returns (ref, description)."""
        from adapt.export import AdapterError, zip_adapter
        from adapt.hub import PREFIX, HubError

        check_owner(owner)
        text = as_text(ref, "the Hub repository", 200).strip()
        if not text:
            raise UserError("give the Hub repository to load, e.g. user/my-adapter")
        with tempfile.TemporaryDirectory() as tmp:
            try:  # downloaded and checked like any adapter, then kept as this browser's upload
                archive = zip_adapter(text if text.startswith(PREFIX) else PREFIX + text, Path(tmp) / "hub.zip")
            except (HubError, AdapterError) as e:
                raise UserError(str(e)) from None
            return self.upload_adapter(owner, str(archive))

    def push_adapter(self, owner: str, ref: str, repo_id: str, token: str, private: bool = False) -> str:
        """Upload one of this browser's adapters to the Hub; returns the repository's URL. The token
        is used for this call only: never stored, logged or echoed."""
        from adapt.export import AdapterError, push_to_hub
        from adapt.hub import HubError

        check_owner(owner)
        if not as_text(ref, "the adapter id", MAX_ID):
            raise UserError("choose an adapter first")
        path = self._adapter_path(owner, ref)
        repo = as_text(repo_id, "the Hub repository", 200).strip()
        secret = as_text(token, "the token", 400).strip() or None
        try:
            return push_to_hub(path, repo, token=secret, private=bool(private))
        except (HubError, AdapterError) as e:
            raise UserError(str(e)) from None

    def adapters(self, owner: str, task: str | None = None) -> list[tuple[str, str]]:
        """(label, ref) of every adapter this browser can use: finished jobs and uploaded zips;
        with `task`, only those trained for it (the others would predict another task)."""
        return [(label, ref) for label, ref, kind, _ in self.adapter_rows(owner) if task in (None, kind)]

    def adapter_rows(self, owner: str) -> list[tuple[str, str, str, str]]:
        """(label, ref, task, base backbone) of every adapter this browser can use."""
        from adapt.backbones import family_of
        from adapt.export import read_adapter
        from adapt.tasks import task_for_family

        check_owner(owner)
        out = []
        for j in self.store.list(owner):
            if j["status"] == "done" and j["kind"] == "train":
                t = j["config"]["train"]
                label = f"job {j['id'][:8]}: {t['method']} on {t['backbone']} ({t['task']})"
                out.append((label, j["id"], t["task"], t["backbone"]))
        folder = self.paths.uploaded_adapters(owner)
        for path in sorted(folder.glob("upload-*.zip")) if folder.exists() else []:
            try:
                cfg, _ = read_adapter(path)
                name = cfg["base_model"]["name"]
                kind = cfg.get("task") or task_for_family(family_of(name))
            except Exception:
                continue
            out.append((f"uploaded: {cfg['method']} on {name} ({kind})", path.stem, kind, name))
        return out

    def _adapter_path(self, owner: str, ref: str) -> Path:
        check_owner(owner)
        ref = as_text(ref, "the adapter id", MAX_ID).strip()
        if ref.startswith("upload-"):
            path = self.paths.uploaded_adapters(owner) / f"{ref}.zip"
            if not re.fullmatch(r"upload-[A-Za-z0-9_-]+", ref) or not path.exists():
                raise UserError(f"no uploaded adapter {ref!r} for this browser")
            return path
        self.adapter_zip(owner, ref)
        return self.paths.job_files(ref).adapter

    # --- prediction ----------------------------------------------------------------------------
    def model(self, owner: str, adapter_ref: str | None, backbone: str, task: str):
        """(task object, description, placement) for an adapter, or the frozen backbone when none is
        chosen; the model sits where app.placement put it (the GPU when it has room)."""
        family_for_task(task)  # a known task
        if as_text(adapter_ref, "the adapter id", MAX_ID):
            path = self._adapter_path(owner, adapter_ref)
            key = ("adapter", str(path))
        else:
            backbone = backbone_for(task, backbone)
            key = ("frozen", backbone, task)
        with self._models_lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            from adapt.pipeline import inference_task

            if adapter_ref:
                from adapt.export import AdapterError

                try:  # WeightsUnavailable (base weights missing) is a RuntimeError
                    task_obj, info = inference_task(adapter=path, task=task)
                except (AdapterError, ValueError, RuntimeError) as e:
                    raise UserError(str(e)) from None
                desc = describe_adapter(info)
            else:
                from adapt.weights import WeightsUnavailable

                try:
                    task_obj, _ = inference_task(backbone=backbone, task=task, download=False)
                except WeightsUnavailable as e:
                    raise UserError(str(e)) from None
                desc = f"frozen `{backbone}` (no adapter)"
            from app.placement import place

            entry = (task_obj, desc, place(task_obj.backbone, task_obj.backbone.name))
            self._models[key] = entry
            while len(self._models) > 3:
                from app.placement import release

                release(self._models.popitem(last=False)[1][0].backbone)
            return entry

    def load_image(self, path: str | None) -> np.ndarray:
        from adapt.data import DatasetError, load_image

        if not as_text(path, "the image"):
            raise UserError("upload an image first")
        try:
            return load_image(path, max_pixels=self.limits.max_pixels)
        except DatasetError as e:
            raise UserError(f"{Path(path).name}: {e.problems[0][1] if e.problems else e}") from None

    def predict(
        self,
        owner: str,
        image_path: str,
        adapter_ref: str,
        backbone: str,
        task: str,
        classes: str = "",
        clicks: str = "",
        text: str = "",
        boxes: str = "",
    ) -> tuple[dict, str]:
        """The task's named outputs at the image's full resolution, and a line about the model used.
        `text`: a phrase instead of clicks (SAM 3 models: every instance of it). `boxes`: exemplar
        boxes, "x0,y0,x1,y1; ..." in image pixels, examples of the classes (the concept task)."""
        check_owner(owner)
        names, points = parse_classes(classes, background=False), parse_clicks(clicks)  # cheap checks first
        text, boxes = as_phrase(text, "the text prompt"), parse_boxes(boxes)
        boxes_taken(boxes, TASKS[choice(task, "task", TASKS)])  # before the image and the model load
        image = self.load_image(image_path)
        entry = self.model(owner, adapter_ref, backbone, task)
        task_obj, desc, where = entry
        if not isinstance(task_obj, TASKS[task]):  # an adapter predicts its own task: never another silently
            raise UserError(
                f"the chosen adapter is for the {TASKS[task_obj.name].title} task, not {TASKS[task].title}: "
                f"choose a {task} adapter, or none to run the frozen backbone"
            )
        request = {}
        if text is not None:
            check_text_prompt(task_obj.name, task_obj.backbone.name)
            request["text"] = text
        elif task_obj.mask.needs_class_names:
            names = names or list(task_obj.classes or [])
            if not names:
                raise UserError("give the class names to look for, separated by commas (e.g. sky, road, car)")
            request["classes"] = names
        elif points is not None:
            clicks_inside(points, image.shape)  # only where they are used: other tasks ignore clicks
            request["points"] = points
        if boxes is not None:  # the task takes them (boxes_taken)
            boxes_inside(boxes, image.shape)
            request["box"] = boxes
        outputs = predict_on(entry, image, **request)
        h, w = outputs["main"].shape[:2]
        note = f"; {where.note}" if where.note else ""
        return outputs, f"{desc}; output {w}x{h} px (the input's resolution){note}"


def predict_on(entry: tuple, image: np.ndarray, **request) -> dict:
    """A model of the studio's cache (Studio.model's (task, description, placement)) predicting
    `image` where it was placed (the GPU when it has room), without gradients."""
    import torch

    from app.placement import run

    task_obj, _, where = entry
    with torch.no_grad():
        return run(lambda device: task_obj.predict_outputs(image, device=device, **request), task_obj.backbone, where)


def describe_adapter(cfg: dict, n_tensors: int | None = None) -> str:
    counts = cfg.get("counts") or {}
    metrics = cfg.get("metrics") or {}
    text = (
        f"`{cfg['method']}` adapter on `{cfg['base_model']['name']}` for {cfg.get('task') or 'an unknown task'}"
        f" ({counts.get('adapter', 0):,} adapter parameters)"
    )
    for key, name in (("iou", "IoU"), ("miou", "mIoU")):
        if f"adapted_{key}" in metrics and f"frozen_{key}" in metrics:
            text += (
                f"; held-out {name} {metrics[f'frozen_{key}']:.3f} frozen -> {metrics[f'adapted_{key}']:.3f} adapted"
            )
    return text
