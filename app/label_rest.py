"""Label the rest, in the studio: auto-label a batch of unlabelled images with an adapter in the
background, rank the results for correction, correct a few into the labelled set, and retrain
warm-started from the adapter on the enlarged set.

    LabelRest(studio).submit(owner, images, adapter_ref, ...) -> job id   (a "label" job in the store,
                           run by the worker: app.jobs.label)
    .results(owner, job)   thumbnails, most uncertain first, with their scores
    .correction(...)       a labelling state (app.labeller) starting from the model's mask
    .accept(...)           the model's mask as is, into the labelled set
    .retrain(...)          a training job warm-started from the adapter on its data + the labelled set
    .download(...)         masks + COCO + scores (zip)

Prediction never runs inside a request: the worker does it, reporting progress in the job's
events.jsonl ("labelled" events), so the page follows it like a training job.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np

from adapt.files import zip_folder
from adapt.tasks import TASKS
from app.catalog import backbone_for, family_for_task
from app.jobs import new_token
from app.studio import MAX_ID, Studio, UserError, as_text, check_owner, file_list, number, parse_classes

THUMB = 200  # px, the long side of a gallery thumbnail
MAX_SHOWN = 120  # results the gallery shows (the download has them all)
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class LabelRest:
    def __init__(self, studio: Studio):
        self.studio = studio
        self.paths = studio.paths
        self.limits = studio.limits

    # --- submitting ------------------------------------------------------------------------------
    def submit(
        self,
        owner: str,
        images,
        adapter_ref: str = "",
        backbone: str = "",
        task: str = "dichotomous",
        classes: str = "",
        batch_size: int = 4,
    ) -> str:
        """Queue a labelling job for uploaded images (one zip, or image files) with an adapter of
        this browser, or a frozen backbone (zero-shot); returns the job id."""
        from adapt.archive import ArchiveLimits, problems
        from adapt.data import IMAGE_EXTS

        check_owner(owner)
        files = [Path(f) for f in file_list(images, "images", self.limits.label_images)]
        if not files:
            raise UserError("upload the images to label: a zip of them, or the image files")
        batch_size = number(batch_size, "batch size", 1, 32, integer=True)
        self.studio.check_active(owner)
        self.studio.check_storage(owner, self.studio.incoming_bytes(files))  # a zip: what it unpacks to, too
        if len(files) == 1 and files[0].suffix.lower() == ".zip":
            try:
                with zipfile.ZipFile(files[0]) as z:
                    found = problems(z, ArchiveLimits.from_env(), "the images")
                    count = sum(Path(n).suffix.lower() in IMAGE_EXTS for n in z.namelist())
            except (zipfile.BadZipFile, OSError) as e:
                raise UserError(f"{files[0].name}: not a readable zip file ({e})") from None
            if found:
                raise UserError(f"{files[0].name}: " + "; ".join(f"{n}: {w}" if n else w for n, w in found[:5]))
        else:
            bad = [f.name for f in files if f.suffix.lower() not in IMAGE_EXTS]
            if bad:
                raise UserError(
                    f"not images: {', '.join(bad[:5])} (give PNG, JPEG, TIFF, BMP or WebP files, or one zip)"
                )
            count = len(files)
        if not count:
            raise UserError(f"{files[0].name} holds no image files")
        if count > self.limits.label_images:
            raise UserError(f"{count} images; one labelling job takes at most {self.limits.label_images}")
        spec = self._model_spec(owner, adapter_ref, backbone, task, classes)
        job_id = new_token()
        job = self.paths.job_files(job_id)
        job.folder.mkdir(parents=True)
        try:
            if len(files) == 1 and files[0].suffix.lower() == ".zip":
                shutil.copyfile(files[0], job.inputs_zip)
            else:
                job.inputs.mkdir()
                for f in files:
                    name = SAFE_NAME.sub("_", f.name)
                    if (job.inputs / name).exists():
                        raise UserError(f"two images are named {name}")
                    shutil.copyfile(f, job.inputs / name)
        except BaseException:
            shutil.rmtree(job.folder, ignore_errors=True)
            raise
        config = {"label": {**spec, "images": count, "batch_size": batch_size}}
        self.studio.store.submit(owner, config, str(job.folder), job_id=job_id, kind="label")
        return job_id

    def _model_spec(self, owner: str, adapter_ref, backbone, task, classes) -> dict:
        """What the worker builds: an adapter (its task, base model, method and classes), or the
        frozen backbone for `task` (open-vocabulary: with the classes given)."""
        from adapt.export import AdapterError, read_adapter

        if as_text(adapter_ref, "the adapter id", MAX_ID).strip():
            path = self.studio._adapter_path(owner, adapter_ref)
            try:
                cfg, _ = read_adapter(path)
            except AdapterError as e:
                raise UserError(str(e)) from None
            names = parse_classes(classes, background=False) or list(cfg.get("classes") or [])
            return {
                "adapter": str(path),
                "adapter_ref": adapter_ref.strip(),
                "task": cfg.get("task") or task,
                "backbone": cfg["base_model"]["name"],
                "method": cfg["method"],
                "classes": names,
            }
        family_for_task(task)
        names = parse_classes(classes, background=False)
        if TASKS[task].mask.needs_class_names and not names:
            raise UserError("name the classes to look for (e.g. background, red object, blue object)")
        return {
            "adapter": None,
            "adapter_ref": "",
            "task": task,
            "backbone": backbone_for(task, backbone),
            "method": "frozen",
            "classes": names,
        }

    # --- results ---------------------------------------------------------------------------------
    def _done_job(self, owner: str, job_id: str) -> tuple[dict, dict]:
        job = self.studio.job(owner, job_id)
        if job["kind"] != "label":
            raise UserError(f"job {job['id']} is a training job, not a labelling job")
        if job["status"] != "done":
            raise UserError(f"job {job['id']} is {job['status']}: its results are there once it is done")
        return job, job["config"]["label"]

    def results(self, owner: str, job_id: str, limit: int = MAX_SHOWN) -> tuple[list, list[dict], str]:
        """(gallery items [(thumbnail RGB, caption)], their score rows, a summary line), most
        uncertain first."""
        import json

        from adapt.batch import FAILED, read_scores

        job, spec = self._done_job(owner, job_id)
        labels = self.paths.job_files(job["id"]).labels
        rows = read_scores(labels)
        items = [(self._thumbnail(job["id"], spec, r), _caption(r)) for r in rows[:limit]]
        failed = json.loads((labels / FAILED).read_text()) if (labels / FAILED).exists() else []
        text = f"**{len(rows)} images labelled** with {spec['method']} on `{spec['backbone']}`, most uncertain first"
        if len(rows) > limit:
            text += f" (the first {limit} shown; the download has them all)"
        if failed:
            text += f". Could not read {len(failed)}: " + "; ".join(f"{f['file']} ({f['error']})" for f in failed[:5])
        return items, rows[:limit], text

    def _image_path(self, job_id: str, record: dict) -> Path:
        files = self.paths.job_files(job_id)
        path = (files.inputs / record["file"]).resolve()
        if not path.is_relative_to(files.inputs.resolve()) or not path.is_file():
            raise UserError(f"the image {record['file']!r} is no longer there")
        return path

    def _mask(self, job_id: str, name: str) -> np.ndarray:
        mask = cv2.imread(str(self.paths.job_files(job_id).labels / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        if mask is None:
            raise UserError(f"no predicted mask for {name!r}")
        return mask

    def _thumbnail(self, job_id: str, spec: dict, record: dict) -> np.ndarray:
        """The prediction over the image, at most THUMB px (cached beside the masks)."""
        cache = self.paths.job_files(job_id).labels / "thumbs" / f"{record['name']}.jpg"
        if cache.exists():
            return cv2.cvtColor(cv2.imread(str(cache)), cv2.COLOR_BGR2RGB)
        image = self.studio.load_image(str(self._image_path(job_id, record)))
        mask = self._mask(job_id, record["name"])
        scale = min(1.0, THUMB / max(image.shape[:2]))
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        kind = TASKS[spec["task"]].mask
        shown = kind.overlay(image, kind.decode(mask))
        cache.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(cache), cv2.cvtColor(np.ascontiguousarray(shown[..., :3]), cv2.COLOR_RGB2BGR))
        return shown

    def _record(self, job_id: str, name: str) -> dict:
        from adapt.batch import read_ledger

        name = as_text(name, "the image name", 255).strip()
        record = read_ledger(self.paths.job_files(job_id).labels).get(name)
        if record is None:
            raise UserError(f"no labelled image {name!r} in this job")
        return record

    def correction(self, owner: str, job_id: str, name: str) -> dict:
        """A labelling state (app.labeller) for one result: the image, with the model's mask as
        the label map to start from."""
        from app import labeller

        job, spec = self._done_job(owner, job_id)
        record = self._record(job["id"], name)
        state = labeller.new_state(self.studio.load_image(str(self._image_path(job["id"], record))), record["file"])
        mask = self._mask(job["id"], record["name"])
        state["labels"] = TASKS[spec["task"]].mask.decode(mask)
        return state

    def classes(self, owner: str, job_id: str) -> list[str]:
        """The class list a correction is saved with (background first)."""
        _, spec = self._done_job(owner, job_id)
        return TASKS[spec["task"]].mask.classes(spec["classes"])

    def accept(self, owner: str, job_id: str, name: str) -> str:
        """Save the model's mask as is into the labelled set; returns the saved stem."""
        from app import labeller

        state = self.correction(owner, job_id, name)
        spec = self._done_job(owner, job_id)[1]
        self.studio.check_storage(owner, state["image"].nbytes // 4)
        try:
            return labeller.save_pair(state, self.paths.labelled_set(owner), spec["task"], self.classes(owner, job_id))
        except ValueError as e:
            raise UserError(str(e)) from None

    def download(self, owner: str, job_id: str) -> Path:
        job, _ = self._done_job(owner, job_id)
        path = self.paths.job_files(job["id"]).labels_zip
        if not path.exists():
            raise UserError(f"job {job['id']} has no results to download")
        return path

    # --- retraining ------------------------------------------------------------------------------
    def retrain(
        self, owner: str, job_id: str, steps: int = 100, lr: float = 1e-3, head_lr: float = 1e-4, batch_size: int = 2
    ) -> str:
        """A training job warm-started from the labelling job's adapter, on the data that adapter
        was trained on (when it came from a job here) plus the labelled set; returns its id."""
        from adapt.data import DatasetError, load_dataset

        job, spec = self._done_job(owner, job_id)
        if not spec["adapter"]:
            raise UserError("these labels came from the frozen model: train an adapter on the labelled set instead")
        labelled = self.paths.labelled_set(owner)
        if not (labelled / "images").exists() or not any((labelled / "images").iterdir()):
            raise UserError("the labelled set is empty: correct or accept some results first")
        sources = [labelled]
        origin = (
            self.studio.store.get(spec["adapter_ref"], owner) if not spec["adapter_ref"].startswith("upload-") else None
        )
        if origin is not None and self.paths.job_files(origin["id"]).data_zip.exists():
            sources.insert(0, self.paths.job_files(origin["id"]).data_zip)
        dest = self.paths.owner_uploads(owner) / f"dataset-{new_token()[:12]}.zip"
        with tempfile.TemporaryDirectory(dir=self.paths.uploads) as tmp:
            folder = Path(tmp) / "dataset"
            classes = None
            for i, source in enumerate(sources):
                try:  # each part may be small; the merged set is checked as a whole by submit
                    dataset = load_dataset(Path(source), task=spec["task"], max_pixels=self.limits.max_pixels)
                except DatasetError as e:
                    raise UserError(str(e)) from None
                if classes is not None and dataset.classes != classes:
                    dataset.close()
                    raise UserError(
                        f"the labelled set's classes ({', '.join(dataset.classes)}) differ from the adapter's "
                        f"training data ({', '.join(classes)}): label with the same class names"
                    )
                classes = dataset.classes
                dataset.write(folder, prefix=f"{i}-")
                dataset.close()
            zip_folder(folder, dest)
        return self.studio.submit(
            owner,
            str(dest),
            spec["task"],
            spec["backbone"],
            spec["method"],
            steps,
            lr,
            head_lr,
            batch_size,
            init_adapter=Path(spec["adapter"]),
        )


def _caption(record: dict) -> str:
    return f"#{record['rank']} · {record['uncertainty']:.2f}"  # short: the gallery cuts long captions


__all__ = ["LabelRest"]
