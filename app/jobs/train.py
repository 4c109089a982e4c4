"""The "train" job kind: fine-tune an adapter on an uploaded dataset.

It loads the job's dataset and calls `adapt.pipeline.train_adapter` with the job's folder as the
output (events, checkpoint, adapter; resumed when a checkpoint is there), renders previews of
held-out images from the live model as training goes (app.jobs.previews), and at the end zips the
adapter and writes the result (file names: app.config.JobFiles). A job that asks for several GPUs
trains data-parallel on the GPUs its worker holds.
"""

from __future__ import annotations

from adapt.data import load_dataset
from adapt.export import zip_adapter
from adapt.files import write_json
from adapt.pipeline import TrainConfig, train_adapter
from app.config import JobFiles
from app.jobs.control import Control
from app.jobs.previews import Previewer


class TrainJob:
    name = "train"
    resume_note = "stopped with the app; resumes from its checkpoint"
    resumes = "it resumes from its last checkpoint"
    start_again = "start it again from the Train tab"

    def run(self, job: dict, files: JobFiles, control: Control, max_pixels: int) -> str:
        spec = job["config"]
        files.folder.mkdir(parents=True, exist_ok=True)
        cfg = TrainConfig(**spec["train"])
        dataset = load_dataset(job["data"], task=cfg.task, max_pixels=max_pixels)
        source = spec.get("data_name", "uploaded dataset")
        previews = Previewer(files, cfg.task, dataset.classes)
        summary = train_adapter(
            cfg,
            dataset,
            files.folder,
            holdout=spec.get("holdout"),
            source=source,
            resume=True,
            should_stop=control.should_stop,
            on_eval=previews,
            gpus=int(spec.get("gpus") or 1),  # data parallel on the GPUs the supervisor gave this worker
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
