"""Dataset formats: find, validate and load few-shot segmentation datasets.

One entry point, `load_dataset(path, task=...)`, accepts a folder or a .zip holding one of:

  * images/ + masks/   (or im/ + gt/): image and mask files paired by file stem; the mask may have
    another extension than its image (cat.jpg + cat.png).
  * COCO: an annotations .json (at the root or in annotations/) with polygon or RLE segmentations,
    and the images in images/ or beside the .json.
  * Label Studio: a JSON export (brush RLE or polygon results) in place of the COCO file, read as
    the COCO document it amounts to (adapt.data.labelstudio); images are found by their file name
    (an upload's 8-character prefix may be left out).

Optionally a held-out folder (val/, valid/, validation/, heldout/, held_out/, held-out/ or test/) with
the same layout inside the root is taken as a given split; root/train/ + root/val/ also works.

Masks
  dichotomous: any grayscale mask; foreground is value > 127 when the mask's maximum is above 1
    (0/255 masks, JPEG masks), else value > 0 (0/1 masks). Loaded as 0/1 uint8.
  openvocab: index PNG (gray value = class id) or palette PNG (mode "P": the palette *indices* are
    the ids, the colours are ignored), plus classes.json at the dataset root: a JSON list of class
    names, or {"classes": [...], "ignore_index": 255}. Pixels equal to ignore_index (255 unless
    set; null disables it) are not labelled. For COCO, id 0 is "background" (pixels no annotation
    covers) and the categories follow in ascending category id; a category named "background"
    takes id 0 instead.

Everything is validated before anything is returned: every problem found, each naming its file,
is raised together as one `DatasetError`. Zips are checked entry by entry before anything is
extracted; they are extracted into a private temporary folder that is removed on failure, and
otherwise when the dataset is closed or garbage collected (or at once, when the whole dataset fits
the in-memory cache).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from adapt.data.archive import extract_zip
from adapt.data.dataset import BINARY_CLASSES, Dataset
from adapt.data.errors import DatasetError
from adapt.data.layout import (
    ACCEPTED_LAYOUTS, DEFAULT_IGNORE, _descend_wrappers, _describe, _find_dir, _heldout_dir, _layout,
    _Loader, _no_dataset_message, _read_classes,
)
from adapt.data.validate import _validate, _validate_files_only

__all__ = ["TASKS", "load_dataset"]

TASKS = ("dichotomous", "openvocab", "concept")
# the concept task (SAM 3) learns from either kind of labels: class maps (classes.json or COCO
# categories) name their classes, binary masks take one phrase (adapt.tasks.concept)
EITHER = "concept"


def load_dataset(path, *, task: str = "dichotomous", max_pixels: int | None = 40_000_000,
                 cache_bytes: int = 1 << 30) -> Dataset:
    """Load and validate a dataset folder or .zip; raise `DatasetError` listing every problem.

    task: "dichotomous" (binary masks, 0/1), "openvocab" (label maps + class names) or "concept"
      (either: label maps where the dataset names its classes, binary masks otherwise; the
      Dataset's `task` then says which labels it holds).
    max_pixels: images or masks with more pixels are refused (checked from the file header,
      before decoding). None disables the check (PIL's decompression-bomb guard still applies).
    cache_bytes: when all images and masks fit (4 bytes per pixel), they stay in memory from
      validation on (and a zip's temporary folder is removed at once); otherwise each access
      decodes from disk.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    path = Path(path)
    label = path.name or str(path)
    if not path.exists():
        raise DatasetError([(str(path), "not found")], source=str(path))
    storage = None
    top = path
    if path.is_file():
        if path.suffix.lower() != ".zip" and not zipfile.is_zipfile(path):
            raise DatasetError([(label, "expected a dataset folder or a .zip file. " + ACCEPTED_LAYOUTS)],
                               source=label)
        storage = extract_zip(path)
        top = storage.path
    if task == EITHER:
        task = "openvocab" if _names_classes(top) else "dichotomous"
    try:
        ds = _load_tree(top, label, task, max_pixels, cache_bytes, storage)
    except BaseException:
        if storage is not None:
            storage.cleanup()
        raise
    if storage is not None and all(s._image is not None for s in ds.samples) and (
            ds.given_heldout is None or all(s._image is not None for s in ds.given_heldout.samples)):
        # Everything is in memory: the extracted files are no longer needed.
        storage.cleanup()
        for s in ds.samples + (ds.given_heldout.samples if ds.given_heldout else []):
            s._storage = None
        ds._storage = None
        if ds.given_heldout is not None:
            ds.given_heldout._storage = None
    ds.origin = {"path": str(path), "task": task, "max_pixels": max_pixels}
    return ds



def _names_classes(top: Path) -> bool:
    """Whether a dataset names its classes: a classes.json at its root (or in train/), or COCO
    annotations (whose categories name them)."""
    root = _descend_wrappers(top)
    main = root if _layout(root) is not None else (_find_dir(root, "train") or root)
    lay = _layout(main)
    return any(f.is_file() for f in (root / "classes.json", main / "classes.json", top / "classes.json")) or bool(
        lay and lay[0] != "pairs"
    )


def _load_tree(top: Path, label: str, task: str, max_pixels, cache_bytes, storage) -> Dataset:
    loader = _Loader(top, label, task, max_pixels)
    root = _descend_wrappers(top)
    main, held = root, None
    if _layout(root) is None and _find_dir(root, "train") is not None:
        main = _find_dir(root, "train")
        held = _heldout_dir(root)
    elif _layout(root) is not None:
        held = _heldout_dir(root)
    parts = [("main", main)] + ([("heldout", held)] if held is not None else [])
    layouts = {which: _layout(folder) for which, folder in parts}

    # classes.json (openvocab label maps): at the dataset root (or in train/); a held-out folder
    # may repeat it, and then it must agree.
    classes = ignore_index = None
    classes_ok = True
    needs_classes = task == "openvocab" and any(lay and lay[0] == "pairs" for lay in layouts.values())
    if needs_classes:
        found = next((f for f in (root / "classes.json", main / "classes.json", top / "classes.json")
                      if f.is_file()), None)
        if found is None:
            loader.problem(loader.name(root / "classes.json"),
                           "not found at the dataset root; the openvocab task needs it: a JSON list "
                           'of class names, e.g. ["background", "cell", "debris"], where the '
                           "position in the list is the mask value")
            classes_ok = False
        else:
            classes, ignore_index = _read_classes(found, loader)
            classes_ok = classes is not None

    results = {}
    coco_classes = {}
    for which, folder in parts:
        lay = layouts[which]
        where = loader.name(folder) + "/" if folder != top else label
        if lay is None:
            if which == "heldout":
                loader.problem(where, "looks like a held-out folder but holds no dataset: "
                                      + _no_dataset_message(folder))
            else:
                loader.problem(where, _no_dataset_message(folder))
            continue
        if lay[0] == "pairs":
            own_file = folder / "classes.json"
            if which == "heldout" and needs_classes and classes is not None and own_file.is_file():
                own, own_ignore = _read_classes(own_file, loader)
                if own is not None and (own, own_ignore) != (classes, ignore_index):
                    loader.problem(own_file, f"lists {own} (ignore {own_ignore}), but the dataset "
                                             f"root's classes.json lists {classes} (ignore {ignore_index})")
            results[which] = ("pairs", loader.collect_pairs(lay[1], lay[2]))
        else:
            cands, cls = loader.collect_coco(folder, lay[1])
            if not cands and not loader.problems:
                loader.problem(where, _no_dataset_message(folder))
            results[which] = ("coco", cands)
            coco_classes[which] = cls

    if task == "openvocab" and len(results) == 2 and results["main"][0] != results["heldout"][0]:
        loader.problem(loader.name(held) + "/", "the held-out folder and the training data use "
                                                "different formats (COCO vs image/mask pairs); use one")
    elif task == "openvocab" and results.get("main", ("",))[0] == "coco":
        classes, ignore_index = coco_classes["main"], DEFAULT_IGNORE
        classes_ok = classes is not None
        other = coco_classes.get("heldout")
        if other is not None and classes is not None and other != classes:
            loader.problem(loader.name(held) + "/", f"the held-out COCO categories {other[1:]} differ "
                                                     f"from the training ones {classes[1:]}")

    samples = {}
    for which, (kind, cands) in results.items():
        if task == "openvocab" and not classes_ok:
            # Label maps cannot be checked without classes; still report the files' own problems.
            _validate_files_only(cands, loader)
            continue
        samples[which] = _validate(cands, loader, classes, ignore_index, cache_bytes, storage)

    if not loader.problems:
        for which, (_, cands) in results.items():
            if not cands:
                folder = main if which == "main" else held
                where = loader.name(folder) + "/" if folder != top else label
                loader.problem(where, f"empty dataset: no image/mask pairs found ({_describe(folder)}). "
                                      f"{ACCEPTED_LAYOUTS}")
    if loader.problems:
        # grouped by file, so all of one image's problems read together
        raise DatasetError(sorted(loader.problems, key=lambda p: p[0]), source=label)

    if task == "dichotomous":
        classes, ignore_index = BINARY_CLASSES, None
    given = None
    if "heldout" in samples:
        given = Dataset(samples["heldout"], task=task, classes=classes, ignore_index=ignore_index,
                        source=f"{label}/{loader.name(held)}", storage=storage)
    return Dataset(samples["main"], task=task, classes=classes, ignore_index=ignore_index,
                   source=label, given_heldout=given, skipped=loader.skipped, storage=storage)
