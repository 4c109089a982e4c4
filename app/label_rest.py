"""Label the rest, in the studio: auto-label a batch of unlabelled images with an adapter in the
background, rank the results for correction, correct a few into the labelled set, and retrain
warm-started from the adapter on the enlarged set.

    LabelRest(studio).submit(owner, images, adapter_ref, ...) -> job id   (a "label" job in the store,
                           run by the worker: app.jobs.label)
    .results(owner, job)   thumbnails, most uncertain first, with their scores
    .correction(...)       a labelling state (app.labeller) starting from the mask decided so far
    .accept(...)           the model's mask as is, into the labelled set (again: the same pair)
    .corrected(...)        a correction saved from the labeller, marked in the results
    .retrain(...)          a training job warm-started from the adapter on its data + the labelled set,
                           held out: the images that adapter was scored on
    .download(...)         masks as decided + COCO + scores with each review (zip)

Each result is one pair in the labelled set at most: accepting it again, or correcting it after
accepting it, rewrites that pair (adapt.batch.record_review keeps the decision and its stem).

Prediction never runs inside a request: the worker does it, reporting progress in the job's
events.jsonl ("labelled" events), so the page follows it like a training job.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from adapt.files import zip_folder
from adapt.tasks import TASKS
from app import labeller
from app.catalog import backbone_for, check_text_prompt, family_for_task
from app.jobs import new_token
from app.studio import MAX_ID, Studio, UserError, as_phrase, as_text, check_owner, file_list, number, parse_classes

THUMB = 200  # px, the long side of a gallery thumbnail
MAX_SHOWN = 120  # results the gallery shows (the download has them all)
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
LABELLED = "labelled-"  # the stems of the labelled set's pairs in a retraining dataset
MARKS = {"accepted": "✓ accepted", "corrected": "✎ corrected"}  # how a review shows in the gallery
_reviewing = threading.Lock()  # one review written at a time (reviewed.json is read, changed, written)


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
        text: str = "",
    ) -> str:
        """Queue a labelling job for uploaded images (one zip, or image files) with an adapter of
        this browser, or a frozen backbone (zero-shot); returns the job id. `text`: a phrase whose
        instances make each binary mask (SAM 3 models; a label map's phrases are its classes)."""
        from adapt.archive import ArchiveLimits, problems
        from adapt.data import IMAGE_EXTS

        check_owner(owner)
        files = [Path(f) for f in file_list(images, "images", self.limits.label_images)]
        if not files:
            raise UserError("upload the images to label: a zip of them, or the image files")
        batch_size = number(batch_size, "batch size", 1, 32, integer=True)
        text = as_phrase(text, "the text prompt")
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
        spec = {**self._model_spec(owner, adapter_ref, backbone, task, classes), "text": text}
        if text:
            check_text_prompt(spec["task"], spec["backbone"])
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

    def default_adapter(self, owner: str, current_job: str = "") -> str:
        """The adapter the tab starts with: the page's current job's, when it is a finished training
        job, else the newest finished training job's; "" (the frozen backbone) when there is none."""
        try:
            check_owner(owner)
        except UserError:
            return ""
        jobs = self.studio.store.list(owner)  # newest first
        refs = [j["id"] for j in jobs if j["kind"] == "train" and j["status"] == "done"]
        return current_job if current_job in refs else next(iter(refs), "")

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
        uncertain first; a row's "review" is "accepted", "corrected" or ""."""
        import json

        from adapt.batch import FAILED, read_reviews, read_scores

        job, spec = self._done_job(owner, job_id)
        labels = self.paths.job_files(job["id"]).labels
        reviews = read_reviews(labels)
        rows = [{**r, "review": reviews.get(r["name"], {}).get("review", "")} for r in read_scores(labels)]
        items = [(self._thumbnail(job["id"], spec, r), _caption(r)) for r in rows[:limit]]
        failed = json.loads((labels / FAILED).read_text()) if (labels / FAILED).exists() else []
        text = f"**{len(rows)} images labelled** with {spec['method']} on `{spec['backbone']}`, most uncertain first"
        if len(rows) > limit:
            text += f" (the first {limit} shown; the download has them all)"
        done = [r["review"] for r in rows if r["review"]]
        text += (
            f". **Reviewed {len(done)} of {len(rows)}** ({done.count('accepted')} accepted, "
            f"{done.count('corrected')} corrected), {len(rows) - len(done)} to go"
        )
        if failed:
            text += f". Could not read {len(failed)}: " + "; ".join(f"{f['file']} ({f['error']})" for f in failed[:5])
        return items, rows[:limit], text

    def _image_path(self, job_id: str, record: dict) -> Path:
        files = self.paths.job_files(job_id)
        path = (files.inputs / record["file"]).resolve()
        if not path.is_relative_to(files.inputs.resolve()) or not path.is_file():
            raise UserError(f"the image {record['file']!r} is no longer there")
        return path

    def _mask(self, job_id: str, name: str, decided: bool = True) -> np.ndarray:
        """The mask decided so far (the user's correction, else the model's), or the model's."""
        from adapt.batch import decided_mask

        labels = self.paths.job_files(job_id).labels
        path = decided_mask(labels, name) if decided else labels / "masks" / f"{name}.png"
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if mask is None:
            raise UserError(f"no predicted mask for {name!r}")
        return mask

    def _thumbnail(self, job_id: str, spec: dict, record: dict) -> np.ndarray:
        """The decided mask over the image, at most THUMB px (cached beside the masks; a correction
        removes its cached thumbnail)."""
        cache = self._thumb_path(job_id, record["name"])
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

    def _thumb_path(self, job_id: str, name: str) -> Path:
        return self.paths.job_files(job_id).labels / "thumbs" / f"{name}.jpg"

    def _record(self, job_id: str, name: str) -> dict:
        from adapt.batch import read_ledger

        name = as_text(name, "the image name", 255).strip()
        record = read_ledger(self.paths.job_files(job_id).labels).get(name)
        if record is None:
            raise UserError(f"no labelled image {name!r} in this job")
        return record

    def correction(self, owner: str, job_id: str, name: str) -> dict:
        """A labelling state (app.labeller) for one result: the image, with the mask decided so far
        as the label map to start from; saved, it rewrites the pair this result already has in the
        labelled set ("stem"), and `corrected` marks it ("review": its job and name)."""
        job, spec = self._done_job(owner, job_id)
        record = self._record(job["id"], name)
        state = labeller.new_state(self.studio.load_image(str(self._image_path(job["id"], record))), record["file"])
        mask = self._mask(job["id"], record["name"])
        state["labels"] = TASKS[spec["task"]].mask.decode(mask)
        state["review"] = {"job": job["id"], "name": record["name"]}
        stem = self._earlier_stem(owner, job["id"], record["name"], state["image"])
        if stem:
            labeller.mark_saved(state, stem)
        return state

    def _earlier_stem(self, owner: str, job_id: str, name: str, image: np.ndarray) -> str | None:
        """The stem of the pair this result was saved as, while that pair is still this image
        (the labelled set may have been emptied, and the name taken by another image since)."""
        from adapt.batch import read_reviews

        stem = read_reviews(self.paths.job_files(job_id).labels).get(name, {}).get("stem")
        saved = self.paths.labelled_set(owner) / "images" / f"{stem}.png"
        if not isinstance(stem, str) or not stem or not saved.is_file():
            return None
        same = _digest(self.studio.load_image(str(saved))) == _digest(image)
        return stem if same else None

    def classes(self, owner: str, job_id: str) -> list[str]:
        """The class list a correction is saved with (background first)."""
        _, spec = self._done_job(owner, job_id)
        return TASKS[spec["task"]].mask.classes(spec["classes"])

    def accept(self, owner: str, job_id: str, name: str) -> str:
        """Save the model's mask as is into the labelled set and mark the result accepted; returns
        the saved stem. Accepting it again (or after a correction) rewrites the same pair."""
        state = self.correction(owner, job_id, name)
        job, spec = self._done_job(owner, job_id)
        state["labels"] = TASKS[spec["task"]].mask.decode(self._mask(job["id"], state["review"]["name"], decided=False))
        self.studio.check_storage(owner, state["image"].nbytes // 4)
        with _reviewing:
            try:
                stem = labeller.save_pair(
                    state, self.paths.labelled_set(owner), spec["task"], self.classes(owner, job_id)
                )
            except ValueError as e:
                raise UserError(str(e)) from None
            self._review(job["id"], state, "accepted", stem)
        return stem

    def corrected(self, owner: str, state: dict | None) -> str | None:
        """Mark the result a labeller state came from (`correction`) as corrected, with the label
        map the labeller saved as its pair (labeller.saved_as); None when the state is not a result's."""
        review = (state or {}).get("review")
        if not review or not labeller.saved_as(state):
            return None
        job, spec = self._done_job(owner, review["job"])
        self._record(job["id"], review["name"])  # still a result of this job
        with _reviewing:
            self._review(
                job["id"],
                state,
                "corrected",
                labeller.saved_as(state),
                TASKS[spec["task"]].mask.encode(state["labels"]),
            )
        return review["name"]

    def _review(self, job_id: str, state: dict, review: str, stem: str, mask: np.ndarray | None = None) -> None:
        from adapt.batch import record_review

        name = state["review"]["name"]
        record_review(self.paths.job_files(job_id).labels, name, review, mask, stem=stem, file=state["name"])
        self._thumb_path(job_id, name).unlink(missing_ok=True)

    def download(self, owner: str, job_id: str) -> Path:
        """The results as the user decided them: the job's own zip while nothing is reviewed, else
        one made now (adapt.batch.export_results: corrected masks in masks/, the model's under
        predicted/, the reviews in scores.csv, annotations.json and reviewed.json)."""
        from adapt.batch import export_results, read_reviews
        from app.jobs.label import UNZIPPED

        job, _ = self._done_job(owner, job_id)
        files = self.paths.job_files(job["id"])
        if not files.labels_zip.exists():
            raise UserError(f"job {job['id']} has no results to download")
        if not read_reviews(files.labels):
            return files.labels_zip
        with _reviewing:
            return export_results(files.labels, files.folder / "labels-reviewed.zip", leave_out=UNZIPPED)

    # --- retraining ------------------------------------------------------------------------------
    def retrain(
        self, owner: str, job_id: str, steps: int = 100, lr: float = 1e-3, head_lr: float = 1e-4, batch_size: int = 2
    ) -> str:
        """A training job warm-started from the labelling job's adapter, on the data that adapter
        was trained on (when it came from a job here) plus the labelled set; returns its id.

        Its held-out images are those of the adapter it continues, so one held-out set stays
        fixed across rounds and is never trained on; the job scores the previous adapter on it
        beside the new one (adapt.train). Only with no held-out set yet (an adapter uploaded
        here) does the job split the labelled set, and that split is kept by the rounds after."""
        job, spec = self._done_job(owner, job_id)
        if not spec["adapter"]:
            raise UserError("these labels came from the frozen model: train an adapter on the labelled set instead")
        labelled = self.paths.labelled_set(owner)
        if not (labelled / "images").exists() or not any((labelled / "images").iterdir()):
            raise UserError("the labelled set is empty: correct or accept some results first")
        dest = self.paths.owner_uploads(owner) / f"dataset-{new_token()[:12]}.zip"
        with tempfile.TemporaryDirectory(dir=self.paths.uploads) as tmp:
            self._write_round(owner, spec, Path(tmp) / "dataset")
            zip_folder(Path(tmp) / "dataset", dest)
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

    def _write_round(self, owner: str, spec: dict, folder: Path) -> None:
        """The next round's dataset in `folder`: the previous round's training images and the
        labelled set (a labelled image replaces the same image's earlier pair), and under
        heldout/ the previous round's held-out images (a labelled image equal to one of them is
        left out). Without a previous round here: the labelled set alone, for the job to split."""
        from adapt.data import Dataset

        labelled = self._load(self.paths.labelled_set(owner), spec["task"])
        origin = self._origin(owner, spec)
        try:
            if origin is None:
                labelled.write(folder, prefix=LABELLED)
                return
            data, holdout, seed = origin
            if data.classes != labelled.classes:
                raise UserError(
                    f"the labelled set's classes ({', '.join(labelled.classes)}) differ from the adapter's "
                    f"training data ({', '.join(data.classes)}): label with the same class names"
                )
            try:
                trained, heldout = data.split(holdout=holdout, seed=seed)  # as the previous round split it
            except (ValueError, TypeError) as e:
                raise UserError(f"cannot find the previous round's held-out images: {e}") from None
            held = {_digest(s.image) for s in heldout}
            pairs = {_digest(s.image): s for s in trained}
            for s in labelled:
                key = _digest(s.image)
                if key not in held:
                    pairs[key] = replace(s, stem=s.stem if s.stem.startswith(LABELLED) else LABELLED + s.stem)
            stems: set[str] = set()
            samples = [replace(s, stem=_unique(s.stem, stems)) for s in pairs.values()]
            kind = {"task": data.task, "classes": data.classes, "ignore_index": data.ignore_index}
            Dataset.of(samples, **kind).write(folder)
            Dataset.of(list(heldout), **kind).write(folder / "heldout")
        finally:
            labelled.close()
            if origin is not None:
                origin[0].close()

    def _origin(self, owner: str, spec: dict) -> tuple | None:
        """(the dataset, holdout, seed) of the training job that made the labelling job's adapter,
        or None for an uploaded adapter (or one whose job's data is gone)."""
        ref = spec["adapter_ref"]
        origin = None if ref.startswith("upload-") else self.studio.store.get(ref, owner)
        if origin is None or origin["kind"] != "train" or not self.paths.job_files(origin["id"]).data_zip.exists():
            return None
        data = self._load(self.paths.job_files(origin["id"]).data_zip, spec["task"])
        return data, origin["config"].get("holdout"), origin["config"]["train"]["seed"]

    def _load(self, source: Path, task: str):
        from adapt.data import DatasetError, load_dataset

        try:  # each part may be small; the merged set is checked as a whole by submit
            return load_dataset(Path(source), task=task, max_pixels=self.limits.max_pixels)
        except DatasetError as e:
            raise UserError(str(e)) from None


def _caption(record: dict) -> str:
    """File name, rank, uncertainty and the review's mark (the chosen result's line has them in full)."""
    mark = MARKS.get(record.get("review", ""))
    return f"{record['file']} · #{record['rank']} · {record['uncertainty']:.2f}" + (f" · {mark}" if mark else "")


def _unique(stem: str, taken: set[str]) -> str:
    """`stem`, or `stem-2`, `stem-3`... when taken; added to `taken`."""
    name, k = stem, 1
    while name in taken:
        k += 1
        name = f"{stem}-{k}"
    taken.add(name)
    return name


def _digest(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()


__all__ = ["LabelRest"]
