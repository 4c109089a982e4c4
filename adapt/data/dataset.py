"""The Dataset container and its Sample: a validated list of image/mask pairs, subsets and splits.

Datasets are made by the loader (`adapt.data.loading.load_dataset`) once everything has been
validated; a `Sample` decodes its image and mask on access (through adapt.data.images and
adapt.data.coco) unless they were small enough to keep in memory. This module does not import the
loader, so that the container and the loader do not depend on each other: a held-out set stored
elsewhere is loaded by the caller with `load_dataset(path, task=...)` and passed to
`Dataset.split` as a Dataset.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import ImageOps

from adapt.data.coco import _coco_mask
from adapt.data.images import _binarize, _mask_values, _open_image, _to_rgb

__all__ = ["Dataset", "Sample"]


@dataclass(eq=False)
class Sample:
    """One image + mask pair. `image` (HxWx3 uint8 RGB) and `mask` (HxW uint8) load on access
    unless the dataset was small enough to keep in memory."""

    stem: str
    image_file: str                 # where it came from, relative to the dataset path/zip
    mask_file: str                  # mask file, or "annotations.json (image id 3)" for COCO
    height: int
    width: int
    task: str
    class_pixels: np.ndarray = field(repr=False)   # pixel count per mask value 0..255
    _image_path: Path = field(repr=False, default=None)
    _exif_transpose: bool = field(repr=False, default=False)
    _mask_path: Path | None = field(repr=False, default=None)
    _coco: tuple | None = field(repr=False, default=None)     # (anns, h, w) for COCO masks
    _image: np.ndarray | None = field(repr=False, default=None)
    _mask: np.ndarray | None = field(repr=False, default=None)
    _storage: object = field(repr=False, default=None)
    _max_pixels: int | None = field(repr=False, default=None)

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def image(self) -> np.ndarray:
        if self._image is not None:
            return self._image
        return self._read_image()

    @property
    def mask(self) -> np.ndarray:
        if self._mask is not None:
            return self._mask
        return self._read_mask()

    @property
    def files(self) -> tuple[str, str]:
        return self.image_file, self.mask_file

    def _read_image(self) -> np.ndarray:
        im = _open_image(self._image_path, self._max_pixels)
        if self._exif_transpose:
            im = ImageOps.exif_transpose(im)
        return _to_rgb(im)

    def _read_mask(self) -> np.ndarray:
        if self._coco is not None:
            anns, h, w = self._coco
            return _coco_mask(anns, h, w, self.task)
        values = _mask_values(_open_image(self._mask_path, self._max_pixels))
        if self.task == "dichotomous":
            return _binarize(values)
        return values.astype(np.uint8)


BINARY_CLASSES = ["background", "foreground"]  # a dichotomous dataset's classes (mask values 0 and 1)


class Dataset(Sequence):
    """A validated list of `Sample`s.

    Attributes: task, classes (list of names; index = mask value; ["background", "foreground"]
    for dichotomous), ignore_index (int or None; None for dichotomous), source (what was loaded),
    given_heldout (a Dataset from a val/ or heldout/ folder, or None), skipped ((file, reason)
    for files that were not used, e.g. README.txt in images/), origin (load_dataset's arguments
    for a dataset loaded from files, so that another process can load it too; None otherwise).
    """

    def __init__(self, samples, *, task: str, classes: list[str], ignore_index: int | None,
                 source: str, given_heldout: Dataset | None = None, skipped=(), storage=None):
        self.samples = list(samples)
        self.task = task
        self.classes = list(classes)
        self.ignore_index = ignore_index
        self.source = source
        self.given_heldout = given_heldout
        self.skipped = list(skipped)
        self._storage = storage
        self.origin: dict | None = None  # load_dataset's arguments, when loaded from files (to load it again)

    @classmethod
    def of(cls, samples, task: str = "dichotomous", classes: list[str] | None = None, ignore_index: int | None = None,
           source: str = "in memory") -> Dataset:
        """A Dataset of samples already in memory (anything with .image, .mask and .stem, e.g.
        generated scenes); a dichotomous one's classes are background and foreground."""
        return cls(samples, task=task, classes=classes or BINARY_CLASSES, ignore_index=ignore_index, source=source)

    # sequence protocol
    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self._subset(self.samples[i])
        return self.samples[i]

    def __repr__(self):
        held = f", given_heldout={len(self.given_heldout)}" if self.given_heldout else ""
        return f"Dataset({self.source!r}, task={self.task}, {len(self)} samples{held})"

    @property
    def stems(self) -> list[str]:
        return [s.stem for s in self.samples]

    def write(self, folder, prefix: str = "", with_heldout: bool = True) -> int:
        """Write the pairs as the standard layout: images/<prefix><stem>.png + masks/ (dichotomous
        0/255; openvocab class ids, with classes.json), the given held-out folder's pairs among
        them (`with_heldout`). One sample in memory at a time; returns the number written."""
        import json

        from PIL import Image

        folder = Path(folder)
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "masks").mkdir(parents=True, exist_ok=True)
        samples = list(self.samples) + (list(self.given_heldout.samples) if with_heldout and self.given_heldout else [])
        for s in samples:
            Image.fromarray(s.image).save(folder / "images" / f"{prefix}{s.stem}.png")
            mask = (s.mask > 0).astype(np.uint8) * 255 if self.task == "dichotomous" else s.mask.astype(np.uint8)
            Image.fromarray(mask).save(folder / "masks" / f"{prefix}{s.stem}.png")
        if self.task == "openvocab":
            (folder / "classes.json").write_text(json.dumps(self.classes))
        return len(samples)

    def close(self):
        """Remove the temporary folder a zip was extracted into (lazy datasets only)."""
        if self._storage is not None:
            self._storage.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _subset(self, samples, source=None) -> Dataset:
        return Dataset(samples, task=self.task, classes=self.classes, ignore_index=self.ignore_index,
                       source=source or self.source, skipped=(), storage=self._storage)

    def subset(self, stems) -> Dataset:
        """The samples with these stems, in this dataset's order."""
        stems = list(stems)
        known = set(self.stems)
        unknown = [s for s in stems if s not in known]
        if unknown:
            raise ValueError(f"unknown stems {unknown[:10]}; this dataset has {sorted(known)[:10]}"
                             f"{' ...' if len(known) > 10 else ''}")
        wanted = set(stems)
        return self._subset([s for s in self.samples if s.stem in wanted])

    def summary(self) -> dict:
        """Counts for a data card and the UI (JSON-serialisable)."""
        n = len(self.samples)
        hs = [s.height for s in self.samples] or [0]
        ws = [s.width for s in self.samples] or [0]
        pixels = np.zeros(256, dtype=np.int64)
        images = np.zeros(256, dtype=np.int64)
        fg = []
        for s in self.samples:
            pixels += s.class_pixels
            images += s.class_pixels > 0
            labelled = s.class_pixels.sum() - (s.class_pixels[self.ignore_index]
                                               if self.ignore_index is not None else 0)
            fg.append((labelled - s.class_pixels[0]) / max(int(labelled), 1))
        out = {
            "task": self.task,
            "source": self.source,
            "count": n,
            "height": [int(min(hs)), int(max(hs))],
            "width": [int(min(ws)), int(max(ws))],
            "megapixels": [round(min(h * w for h, w in zip(hs, ws)) / 1e6, 3),
                           round(max(h * w for h, w in zip(hs, ws)) / 1e6, 3)],
            "foreground_fraction_mean": float(np.mean(fg)) if fg else 0.0,
            "classes": list(self.classes),
            "class_pixels": {c: int(pixels[i]) for i, c in enumerate(self.classes)},
            "class_images": {c: int(images[i]) for i, c in enumerate(self.classes)},
            "ignore_index": self.ignore_index,
            "ignored_pixels": int(pixels[self.ignore_index]) if self.ignore_index is not None else 0,
            "given_heldout": len(self.given_heldout) if self.given_heldout is not None else None,
            "skipped": [f"{f}: {m}" for f, m in self.skipped],
        }
        return out

    def split(self, holdout=None, seed: int = 0) -> tuple[Dataset, Dataset]:
        """(train, heldout). The held-out part is never empty.

        holdout: None -> the given held-out folder if the dataset has one, else 0.3;
          a float in (0, 1) -> that fraction of the samples (rounded, at least 1, at most n-1);
          an int (or a whole float >= 1, as a CLI passes it) -> that many samples; a list/tuple/set of stems -> exactly those;
          a Dataset -> use it as the held-out set (same task; for openvocab, the same classes).
        A path (str or Path) is refused with a TypeError: load a held-out folder or zip with
        `load_dataset(path, task=...)` first and pass the Dataset (the container does not load).
        A fraction or count splits this dataset's own samples (a given held-out folder is then
        not used). Random choices depend only on `seed` and the sorted stems.
        """
        if holdout is None:
            if self.given_heldout is not None:
                return self, self.given_heldout
            holdout = 0.3
        if isinstance(holdout, Dataset):
            return self, self._check_compatible(holdout)
        if isinstance(holdout, (str, os.PathLike)):
            raise TypeError(f"holdout={str(holdout)!r} is a path; load it with "
                            f"load_dataset(path, task={self.task!r}) first and pass the Dataset")
        n = len(self.samples)
        if isinstance(holdout, (list, tuple, set, frozenset)):
            stems = list(holdout)
            if not stems:
                raise ValueError("the list of held-out stems is empty")
            held = self.subset(stems)
            if len(held) == n:
                raise ValueError("every sample is held out; leave at least one for training")
            wanted = set(stems)
            return self._subset([s for s in self.samples if s.stem not in wanted]), held
        if n < 2:
            raise ValueError(f"cannot make a held-out split from {n} sample(s): add at least one more "
                             "image, or give a held-out folder (val/ or heldout/)")
        if isinstance(holdout, bool) or not isinstance(holdout, (int, float, np.integer, np.floating)):
            raise TypeError(f"holdout must be a fraction, a count, a list of stems or a Dataset, "
                            f"not {type(holdout).__name__}")
        if isinstance(holdout, (float, np.floating)) and holdout >= 1.0:
            if float(holdout) != int(holdout):
                raise ValueError(f"holdout must be a fraction below 1 or a whole count, got {holdout}")
            holdout = int(holdout)          # a CLI's float option: 2.0 means two images
        if isinstance(holdout, (float, np.floating)):
            if not 0.0 < holdout < 1.0:
                raise ValueError(f"holdout fraction must be between 0 and 1, got {holdout}")
            k = min(max(int(math.floor(n * holdout + 0.5)), 1), n - 1)
        else:
            k = int(holdout)
            if not 1 <= k <= n - 1:
                raise ValueError(f"holdout={k} must be between 1 and {n - 1} for {n} samples "
                                 "(at least one held out, at least one to train on)")
        order = sorted(range(n), key=lambda i: self.samples[i].stem)
        perm = np.random.default_rng(seed).permutation(n)
        held_idx = {order[i] for i in perm[:k]}
        train = [s for i, s in enumerate(self.samples) if i not in held_idx]
        held = [s for i, s in enumerate(self.samples) if i in held_idx]
        return self._subset(train), self._subset(held)

    def _check_compatible(self, other: Dataset) -> Dataset:
        if other.task != self.task:
            raise ValueError(f"held-out set is for task {other.task}, this dataset is {self.task}")
        if self.task == "openvocab" and other.classes != self.classes:
            raise ValueError(f"held-out set has classes {other.classes}, this dataset has {self.classes}")
        return other
