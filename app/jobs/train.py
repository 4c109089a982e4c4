"""The "train" job kind: fine-tune an adapter on an uploaded dataset.

It loads the job's dataset and calls `adapt.pipeline.train_adapter` with the job's folder as the
output (events, checkpoint, adapter; resumed when a checkpoint is there), renders previews of
held-out images from the live model as training goes (app.jobs.previews), and at the end zips the
adapter and writes the result (file names: app.config.JobFiles). A job that asks for several GPUs
trains data-parallel on the GPUs its worker holds.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from adapt.data import load_dataset
from adapt.distributed import run_data_parallel, train_job
from adapt.export import zip_adapter
from adapt.files import write_json
from adapt.pipeline import train_adapter
from adapt.train import TrainConfig
from app.config import JobFiles
from app.jobs.control import Control
from app.jobs.previews import Previewer


class TrainJob:
    name = "train"
    resume_note = "stopped with the app; resumes from its checkpoint"

    def run(self, job: dict, files: JobFiles, control: Control, max_pixels: int) -> str:
        spec = job["config"]
        files.folder.mkdir(parents=True, exist_ok=True)
        cfg = TrainConfig(**spec["train"])
        gpus = int(spec.get("gpus") or 1)
        dataset = load_dataset(job["data"], task=cfg.task, max_pixels=max_pixels)
        source = spec.get("data_name", "uploaded dataset")
        previews = Previewer(files, cfg.task, dataset.classes)
        if gpus > 1:  # one process per GPU of this worker (the supervisor gave it `gpus` of them)
            summary = _data_parallel(gpus, cfg, job, files, previews, source, max_pixels, control)
        else:
            summary = train_adapter(
                cfg,
                dataset,
                files.folder,
                holdout=spec.get("holdout"),
                source=source,
                resume=True,
                should_stop=control.should_stop,
                on_eval=previews,
            )
        if summary["status"] == "cancelled":
            return "cancelled" if control.cancelled() else "stopped"
        zip_adapter(summary["adapter"], files.adapter_zip)
        write_json(files.result, {k: (str(v) if k == "adapter" else v) for k, v in summary.items()})
        return "done"

    def has_checkpoint(self, files: JobFiles) -> bool:
        return files.checkpoint.exists()

    def externals(self, job: dict) -> list[str]:
        return []  # its dataset and its warm start are copied into its folder when it is submitted

    def brief(self, config: dict) -> dict:
        return {k: config["train"][k] for k in ("task", "backbone", "method", "steps")}


def _data_parallel(gpus, cfg, job, files, previews, source, max_pixels, control: Control) -> dict:
    """A multi-GPU job: adapt.distributed's processes, stopped through a flag file when the job is
    cancelled or the app stops (the ranks cannot see this process's events)."""
    stop = files.folder / "stop.flag"
    stop.unlink(missing_ok=True)
    done = threading.Event()

    def watch():
        while not done.wait(0.5):
            if control.should_stop():
                stop.touch()
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    threads = max(1, (int(os.environ.get("ADAPT_WORKER_THREADS") or os.cpu_count() or 1)) // gpus)
    try:
        args = (cfg, job["data"], str(files.folder), job["config"].get("holdout"), cfg.task, threads, True)
        summary = run_data_parallel(gpus, train_job, *args, str(stop), previews, source, max_pixels)[0]
    finally:
        done.set()
        stop.unlink(missing_ok=True)
    summary["adapter"] = Path(summary["adapter"]) if summary.get("adapter") else None
    return summary
