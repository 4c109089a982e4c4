"""Label the rest: run a model over a folder or zip of images, streaming, ranked for correction.

    report = label_images(task, "unlabelled/", "out/", batch_size=4, resume=True)

Images are read, predicted (the task's `predict_many`: one encoder call per batch) and written a
batch at a time, so memory does not grow with the number of images. OUT holds:

    masks/<name>.png      dichotomous: the 0/255 mask; open-vocabulary: class ids (uint8 PNG)
    alpha/<name>.png      dichotomous, soft=True: the soft mask, 0-255
    cutout/<name>.png     dichotomous, cutout=True: RGBA, background transparent
    colour/<name>.png     open-vocabulary: the colour label map
    records.jsonl         one line per image written (the ledger `resume` reads)
    scores.csv            one row per image, most uncertain first (adapt.uncertainty)
    annotations.json      COCO, compressed RLE, built from masks/ (so they agree exactly)
    failed.json           files that could not be read, with the reason
    summary.json          counts, task, classes, model, seconds
    labelstudio.json      on request (`write_labelstudio`): the results as a Label Studio import file

What a user decides afterwards is kept beside them (the studio's label the rest):

    reviewed.json         name -> {"review": "accepted" | "corrected", ...}: one entry per result
    corrected/<name>.png  a corrected result's mask, in masks/' format

`export_results` zips the results as decided: a corrected mask replaces the model's in masks/
(the model's own under predicted/), scores.csv gains a "review" column and annotations.json is
rebuilt from the decided masks, each image entry marked with its review.

Every file is written atomically (a temporary name, then a rename): a kill leaves no half-written
PNG, and `resume` skips every image already in the ledger. An unreadable, corrupt or oversized
image, or one whose outputs cannot be written, is listed in failed.json and the batch goes on (a
full disk stops it: nothing after would fit either). <name> is the file's path relative to the
folder, "/" turned into "__", without its extension; a name longer than MAX_NAME_BYTES, or one that
two files would share ("a/x.png" and "a__x.png"), is shortened and ends with a hash of the file's
path, so names are unique and fit every file system. scores.csv and the COCO file keep the
source's own relative path.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import inspect
import io
import json
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import numpy as np

from adapt.data.images import IMAGE_EXTS, load_image
from adapt.files import atomic_path, disk_full, write_json, write_text

RECORDS = "records.jsonl"
SCORES = "scores.csv"
COCO = "annotations.json"
FAILED = "failed.json"
SUMMARY = "summary.json"
LABELSTUDIO = "labelstudio.json"
REVIEWED = "reviewed.json"
CORRECTED = "corrected"
PREDICTED = "predicted"  # in an export: the model's masks that a correction replaced
REVIEWS = ("accepted", "corrected")
MAX_NAME_BYTES = 120  # an output name, before "_alpha" etc. and ".png": far below any file system's 255
MAX_PIXELS = 40_000_000  # per image, as everywhere else (adapt.data.images)


@dataclass
class Report:
    out: Path
    total: int = 0
    done: list[str] = field(default_factory=list)  # names written in this run
    skipped: list[str] = field(default_factory=list)  # already in the ledger (resume)
    failed: list[dict] = field(default_factory=list)  # {"file", "error"}
    cancelled: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "total": self.total,
            "written": len(self.done),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "cancelled": self.cancelled,
            "seconds": round(self.seconds, 2),
        }


@dataclass(frozen=True)
class Source:
    name: str  # output name (no extension)
    path: Path
    label: str  # what the user calls it: the relative path


def list_images(folder: str | Path) -> list[Source]:
    """Every image file under `folder` (recursively, hidden files and __MACOSX skipped), sorted,
    with collision-free output names."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder of images")
    paths = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTS
        and not any(part.startswith(".") or part == "__MACOSX" for part in p.relative_to(folder).parts)
    )
    rel = [p.relative_to(folder) for p in paths]
    return [Source(name, p, r.as_posix()) for name, r, p in zip(output_names(rel), rel, paths)]


def output_names(rel: list[PurePath]) -> list[str]:
    """Unique, bounded output names for relative image paths (see the module docstring)."""
    stems = ["__".join(r.with_suffix("").parts) for r in rel]
    shared = Counter(stems)
    return [_hashed(s, r) if shared[s] > 1 or len(s.encode()) > MAX_NAME_BYTES else s for s, r in zip(stems, rel)]


def _hashed(stem: str, rel: PurePath) -> str:
    """`stem` cut to fit, then "-" and a hash of the whole relative path (unique per file)."""
    digest = hashlib.sha256(rel.as_posix().encode()).hexdigest()[:12]
    head = stem.encode()[: MAX_NAME_BYTES - len(digest) - 1].decode(errors="ignore")
    return f"{head}-{digest}"


def open_source(source: str | Path, scratch: Path) -> Path:
    """A folder as is; a zip extracted into `scratch` through the archive guard (adapt.archive)."""
    source = Path(source)
    if source.is_dir():
        return source
    if source.suffix.lower() == ".zip":
        from adapt.archive import safe_extract

        safe_extract(source, scratch, folder="the images")
        return scratch
    raise ValueError(f"{source}: give a folder of images or a .zip of them")


def read_ledger(out: Path) -> dict[str, dict]:
    """name -> record for every image written by an earlier run whose mask is still there
    (a torn last line, from a kill mid-write, is ignored)."""
    records = {}
    path = out / RECORDS
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and (out / "masks" / f"{record.get('name')}.png").exists():
                records[record["name"]] = record
    return records


def _save(array: np.ndarray, path: Path) -> None:
    from adapt.render import save_png

    save_png(array, path)


def _write(out: Path, source: Source, image: np.ndarray, outputs: dict, soft: bool, cutout: bool) -> None:
    if "index" in outputs:  # open-vocabulary: ids in masks/, the colour map beside
        _save(outputs["index"], out / "masks" / f"{source.name}.png")
        _save(outputs["main"], out / "colour" / f"{source.name}.png")
        return
    _save(outputs["main"], out / "masks" / f"{source.name}.png")
    if soft:
        _save(outputs["alpha"], out / "alpha" / f"{source.name}.png")
    if cutout:
        from adapt.render import cutout as rgba

        _save(rgba(image, outputs["alpha"]), out / "cutout" / f"{source.name}.png")


def _remove_outputs(out: Path, source: Source) -> None:
    """What an image whose outputs failed half-way had written (nothing half-written is kept)."""
    for folder in ("masks", "colour", "alpha", "cutout"):
        with contextlib.suppress(OSError):
            (out / folder / f"{source.name}.png").unlink(missing_ok=True)


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def label_images(
    task,
    source: str | Path,
    out: str | Path,
    *,
    classes: list[str] | None = None,
    text: str | None = None,
    batch_size: int = 4,
    resume: bool = False,
    soft: bool = False,
    cutout: bool = False,
    device="cpu",
    model: str = "",
    progress: Callable[[int, int, str], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    max_pixels: int | None = MAX_PIXELS,
) -> Report:
    """Predict every image of `source` (folder or zip) with `task` (adapt.pipeline.inference_task)
    into `out`; see the module docstring for what is written. `progress(done, total, name)` is
    called after each image (done counts skipped and failed ones too); `should_stop()` between
    batches ends the run early with the ledger, scores and COCO file consistent so far. `classes`:
    a label map's classes (the task's own when None); `text`: a binary mask's phrase (SAM 3's
    dichotomous task: every instance of it; the task's predict_many must take one)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, not {batch_size}")
    if text and "text" not in inspect.signature(task.predict_many).parameters:
        raise ValueError(f"the {task.name} task labels no text prompt: give its classes instead")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out)
    started = time.time()
    named = task.mask.needs_class_names  # a label map of named classes (open-vocabulary, concept)
    vocabulary = task.vocabulary(classes) if named else task.mask.classes([])
    with tempfile.TemporaryDirectory(prefix="adapt-batch-") as scratch:
        sources = list_images(open_source(source, Path(scratch) / "images"))
        report.total = len(sources)
        ledger = read_ledger(out) if resume else {}
        if not resume:
            (out / RECORDS).unlink(missing_ok=True)
        todo = [s for s in sources if s.name not in ledger]
        report.skipped = [s.name for s in sources if s.name in ledger]
        count = len(report.skipped)
        with open(out / RECORDS, "a") as records:
            for chunk in _chunks(todo, batch_size):
                if should_stop():
                    report.cancelled = True
                    break
                loaded = []
                for s in chunk:
                    try:
                        loaded.append((s, load_image(s.path, max_pixels=max_pixels)))
                    except (ValueError, OSError) as e:  # DatasetError names the file and the reason
                        report.failed.append({"file": s.label, "error": str(e).split(": ", 1)[-1]})
                        count += 1
                        if progress:
                            progress(count, report.total, s.label)
                if not loaded:
                    continue
                images = [image for _, image in loaded]
                kwargs = {"classes": vocabulary} if named else ({"text": text} if text else {})
                predictions = task.predict_many(images, device=device, **kwargs)
                for (s, image), (outputs, scores) in zip(loaded, predictions):
                    count += 1
                    try:
                        _write(out, s, image, outputs, soft, cutout)
                    except OSError as e:
                        if disk_full(e):
                            raise
                        report.failed.append({"file": s.label, "error": f"could not write its outputs ({e})"})
                        _remove_outputs(out, s)
                        if progress:
                            progress(count, report.total, s.label)
                        continue
                    h, w = image.shape[:2]
                    record = {"name": s.name, "file": s.label, "width": w, "height": h, **scores}
                    records.write(json.dumps(record) + "\n")
                    records.flush()
                    ledger[s.name] = record
                    report.done.append(s.name)
                    if progress:
                        progress(count, report.total, s.label)
                del images, predictions, loaded
        names = [s.name for s in sources if s.name in ledger]  # in source order
        write_scores(out, [ledger[n] for n in names])
        write_coco(out, [ledger[n] for n in names], vocabulary)
        write_json(out / FAILED, report.failed, indent=1)
        report.seconds = time.time() - started
        write_json(
            out / SUMMARY,
            {**report.as_dict(), "task": task.name, "classes": vocabulary, "model": model, "images": len(names)},
            indent=1,
        )
    return report


def write_scores(out: Path, records: list[dict]) -> Path:
    """scores.csv, most uncertain first (ties: by name)."""
    rows = sorted(records, key=lambda r: (-r["uncertainty"], r["name"]))
    fields = ["rank", "name", "file", "width", "height"]
    for r in rows:
        fields += [k for k in r if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for i, r in enumerate(rows, 1):
        writer.writerow({"rank": i, **r})
    return write_text(out / SCORES, buffer.getvalue())


def read_scores(out: str | Path) -> list[dict]:
    """scores.csv back, most uncertain first, numbers as numbers."""
    with open(Path(out) / SCORES, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            if k not in ("name", "file", "review"):
                try:
                    r[k] = int(v) if k in ("rank", "width", "height") else float(v)
                except ValueError:
                    pass
    return rows


def write_coco(out: Path, records: list[dict], vocabulary: list[str]) -> Path:
    """annotations.json from the written masks: one image entry per record (with its "review", when
    it has one), one annotation per (image, class present) with a compressed RLE, its area and
    bounding box, and the model's confidence as "score" (not on a corrected image). Read one mask at a
    time; the JSON holds only the RLE strings."""
    from PIL import Image

    from adapt.data.coco import rle_encode

    categories = [{"id": k, "name": name, "supercategory": "object"} for k, name in enumerate(vocabulary) if k]
    images, annotations = [], []
    for image_id, r in enumerate(records, 1):
        images.append({"id": image_id, "file_name": r["file"], "width": r["width"], "height": r["height"]})
        if r.get("review"):
            images[-1]["review"] = r["review"]
        labels = np.asarray(Image.open(out / "masks" / f"{r['name']}.png"))
        present = [1] if len(vocabulary) == 2 else [int(k) for k in np.unique(labels) if k]
        for k in present:
            mask = labels > 0 if len(vocabulary) == 2 else labels == k
            ys, xs = np.nonzero(mask)
            if not len(ys):
                continue
            x0, y0 = int(xs.min()), int(ys.min())
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": k,
                    "segmentation": rle_encode(mask),
                    "area": int(len(ys)),
                    "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
                    "iscrowd": 0,
                }
            )
            if r.get("review") != "corrected":  # the model's confidence; a corrected mask is the user's
                annotations[-1]["score"] = round(1.0 - float(r["uncertainty"]), 6)
    coco = {
        "info": {"description": "predicted by adapt (label the rest)", "version": "1"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    path = out / COCO
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(coco))
    return path


def write_labelstudio(
    out: str | Path, image_prefix: str, model_version: str = "", dest: str | Path | None = None
) -> Path:
    """A labelled folder's results as a Label Studio import file (adapt.data.labelstudio): one task per
    image, most uncertain first (Label Studio lists them in that order), its data.image the image's
    relative path after `image_prefix` (where Label Studio finds the file: a URL, or its local
    storage's "/data/local-files/?d=folder/"), and the mask as a prediction (one brush result per
    class present) whose score is the model's confidence (1 - uncertainty) and model_version
    `model_version`; a corrected result is an annotation. Written to `dest` (default
    OUT/labelstudio.json)."""
    from PIL import Image

    from adapt.data.labelstudio import tasks_from_masks

    out = Path(out)
    summary = json.loads((out / SUMMARY).read_text())
    labels = summary["classes"][1:]
    reviews = read_reviews(out)
    version = model_version or Path(str(summary.get("model") or "adapt")).name
    tasks = []
    for r in read_scores(out):  # most uncertain first
        mask = np.asarray(Image.open(decided_mask(out, r["name"])))
        mask = (mask > 0).astype(np.uint8) if len(labels) == 1 else mask
        corrected = reviews.get(r["name"], {}).get("review") == "corrected"
        item = [(image_prefix + r["file"], mask, 1.0 - float(r["uncertainty"]))]
        tasks += tasks_from_masks(item, labels, model_version=None if corrected else version)
    path = Path(dest) if dest else out / LABELSTUDIO
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(tasks))
    return path


# --- what the user decided -------------------------------------------------------------------------


def read_reviews(out: str | Path) -> dict[str, dict]:
    """name -> {"review": "accepted" | "corrected", ...} for every result reviewed so far."""
    try:
        reviews = json.loads((Path(out) / REVIEWED).read_text())
    except (OSError, ValueError):
        return {}
    return reviews if isinstance(reviews, dict) else {}


def record_review(out: str | Path, name: str, review: str, mask: np.ndarray | None = None, **extra) -> dict:
    """Mark the result `name` as accepted (the model's mask is the decision) or corrected (`mask`,
    in masks/' format, is: kept as corrected/<name>.png); a later review of the same result
    replaces the earlier one. Returns its entry. One writer at a time (the caller serialises)."""
    out = Path(out)
    if review not in REVIEWS:
        raise ValueError(f"a review is one of {', '.join(REVIEWS)}, not {review!r}")
    if not (out / "masks" / f"{name}.png").exists():
        raise ValueError(f"no result named {name!r}")
    corrected = out / CORRECTED / f"{name}.png"
    if review == "corrected":
        if mask is None:
            raise ValueError("a correction needs its mask")
        _save(mask, corrected)
    else:
        corrected.unlink(missing_ok=True)
    reviews = read_reviews(out)
    reviews[name] = {"review": review, **extra}
    write_json(out / REVIEWED, reviews, indent=1)
    return reviews[name]


def decided_mask(out: str | Path, name: str) -> Path:
    """The mask the user decided on for `name`: their correction, else the model's."""
    corrected = Path(out) / CORRECTED / f"{name}.png"
    return corrected if corrected.exists() else Path(out) / "masks" / f"{name}.png"


def export_results(out: str | Path, dest: str | Path, leave_out: tuple[str, ...] = ()) -> Path:
    """Zip the results in `out` as the user decided them (see the module docstring) into `dest`;
    `leave_out`: top-level folders kept out (e.g. a cache). Returns `dest`."""
    import shutil

    from adapt.files import zip_folder

    out = Path(out)
    reviews = read_reviews(out)
    kept = {RECORDS, REVIEWED, CORRECTED, *leave_out}
    with tempfile.TemporaryDirectory(prefix="adapt-export-") as tmp:
        folder = Path(tmp)
        for path in sorted(out.iterdir()):
            if path.name not in kept:
                (shutil.copytree if path.is_dir() else shutil.copyfile)(path, folder / path.name)
        for name, entry in reviews.items():
            if entry.get("review") != "corrected" or not (out / CORRECTED / f"{name}.png").exists():
                continue
            for kind in ("masks", "colour"):  # the model's colour map no longer matches: moved aside
                if (folder / kind / f"{name}.png").exists():
                    (folder / PREDICTED / kind).mkdir(parents=True, exist_ok=True)
                    (folder / kind / f"{name}.png").rename(folder / PREDICTED / kind / f"{name}.png")
            shutil.copyfile(out / CORRECTED / f"{name}.png", folder / "masks" / f"{name}.png")
        ledger = read_ledger(out)
        records = [{**r, "review": reviews.get(n, {}).get("review", "")} for n, r in ledger.items()]
        write_scores(folder, records)
        vocabulary = json.loads((out / SUMMARY).read_text())["classes"] if (out / SUMMARY).exists() else None
        write_coco(folder, records, vocabulary or ["background", "foreground"])
        if vocabulary:  # the same results for Label Studio, each image at its path in the labelled folder
            write_labelstudio(out, "", dest=folder / LABELSTUDIO)
        write_json(folder / REVIEWED, reviews, indent=1)
        return zip_folder(folder, dest)
