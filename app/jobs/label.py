"""The "label" job kind: label the rest. Auto-label a batch of uploaded images with an adapter (or
a frozen backbone) through `adapt.batch.label_images`, reporting progress in the job's
event log (adapt.events: "labelled" events) so the page follows it like a training job, and zip the masks,
annotations and scores for download. The request side (submit, results, corrections, retrain) is
app.label_rest.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from adapt.archive import safe_extract
from adapt.batch import RECORDS, label_images
from adapt.events import EventLog, Labelled, LabellingCancelled, LabellingDone, LabellingStart
from adapt.files import zip_folder
from adapt.pipeline import inference_task
from app.config import JobFiles
from app.jobs.control import Control

UNZIPPED = ("thumbs",)  # folders of the labels that stay out of the download (the page's cache)


class LabelJob:
    name = "label"
    resume_note = "stopped with the app; resumes where it was"
    resumes = "it labels the images it has not labelled yet, keeping the others"
    start_again = "start it again from the Label the rest tab"

    def run(self, job: dict, files: JobFiles, control: Control, max_pixels: int) -> str:
        """Label the job's images; a restarted job resumes: the images already in the ledger are
        skipped."""
        spec = job["config"]["label"]
        if files.inputs_zip.exists() and not files.inputs.exists():
            with tempfile.TemporaryDirectory(dir=files.folder) as tmp:
                safe_extract(files.inputs_zip, Path(tmp) / "x", folder="the images")
                (Path(tmp) / "x").rename(files.inputs)
        if spec["adapter"]:
            task, _ = inference_task(adapter=spec["adapter"], task=spec["task"])
        else:
            task, _ = inference_task(backbone=spec["backbone"], task=spec["task"], download=False)
        log = EventLog(files.events)
        log(LabellingStart(images=spec["images"], model=spec["method"], backbone=spec["backbone"]))
        started, first = time.time(), []

        def progress(done, total, name):
            if not first:
                first.append(done)
            rate = (time.time() - started) / max(1, done - first[0] + 1)
            log(Labelled(step=done, total=total, name=name, eta_s=round(rate * (total - done), 1)))

        report = label_images(
            task,
            files.inputs,
            files.labels,
            classes=spec["classes"] or None,
            text=spec.get("text"),  # a SAM 3 model's phrase (jobs queued before it had none)
            batch_size=spec["batch_size"],
            resume=True,
            model=spec["adapter_ref"] or spec["backbone"],
            progress=progress,
            should_stop=control.should_stop,
            max_pixels=max_pixels,
        )
        if report.cancelled:
            log(LabellingCancelled(step=len(report.done) + len(report.skipped)))
            return "cancelled" if control.cancelled() else "stopped"
        zip_results(files.labels, files.labels_zip)
        log(LabellingDone(step=report.total, failed=len(report.failed)))
        return "done"

    def has_checkpoint(self, files: JobFiles) -> bool:
        return files.labels.exists()  # its ledger is its checkpoint (adapt.batch)

    def externals(self, job: dict) -> list[str]:
        adapter = job["config"]["label"].get("adapter")
        return [adapter] if adapter else []  # the adapter it predicts with

    def brief(self, config: dict) -> dict:
        spec = config["label"]
        return {**{k: spec[k] for k in ("task", "backbone", "method")}, "steps": spec["images"]}


def zip_results(labels: Path, dest: Path) -> Path:
    """What "Download all" gives: masks/ (and colour/), annotations.json, scores.csv, failed.json."""
    return zip_folder(labels, dest, keep=lambda rel: rel.parts[0] not in UNZIPPED and rel.name != RECORDS)
