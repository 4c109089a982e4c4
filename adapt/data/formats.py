"""Dataset formats: find, validate and load few-shot segmentation datasets.

One entry point, `load_dataset(path, task=...)`, accepts a folder or a .zip holding one of:

  * images/ + masks/   (or im/ + gt/): image and mask files paired by file stem; the mask may have
    another extension than its image (cat.jpg + cat.png).
  * COCO: an annotations .json (at the root or in annotations/) with polygon or RLE segmentations,
    and the images in images/ or beside the .json.

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

import contextlib
import json
import math
import re
import shutil
import stat
import tempfile
import threading
import warnings
import weakref
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "TASKS", "DatasetError", "Dataset", "Sample", "load_dataset", "load_image", "rle_decode", "rle_encode",
    "polygons_to_mask", "ACCEPTED_LAYOUTS",
]

TASKS = ("dichotomous", "openvocab")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif")
PAIR_LAYOUTS = (("images", "masks"), ("im", "gt"))
HELDOUT_DIRS = ("val", "valid", "validation", "heldout", "held_out", "held-out", "test")
MASK_SUFFIXES = ("_mask", "-mask", ".mask", "_masks", "_gt", "-gt", "_label", "_labels", "_seg")
JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "__macosx"}
MAX_LISTED = 20
DEFAULT_IGNORE = 255
ZIP_MAX_BYTES = 8 << 30          # refuse zips that would unpack to more than this
ZIP_MAX_ENTRIES = 100_000
JSON_MAX_BYTES = 512 << 20

ACCEPTED_LAYOUTS = (
    "Accepted layouts: (1) an images/ folder and a masks/ folder whose files share names "
    "(cat_01.jpg + cat_01.png); (2) the same with im/ and gt/; (3) a COCO annotations .json "
    "(at the root or in annotations/) with the images in images/ or beside it. "
    "A val/ or heldout/ folder with the same layout is used as the held-out split; "
    "openvocab label-map datasets also need classes.json at the root."
)


# ----------------------------------------------------------------------------------------------
# Errors


class DatasetError(ValueError):
    """Every problem found in a dataset. `.problems` is a list of (file, message)."""

    def __init__(self, problems, source: str | None = None):
        self.problems = [(str(f), str(m)) for f, m in problems]
        self.source = source
        super().__init__(self._format())

    def _format(self) -> str:
        n = len(self.problems)
        where = f"Dataset {self.source}" if self.source else "Dataset"
        head = f"{where} has {n} problem{'s' if n != 1 else ''}:"
        lines = [f"  {f}: {m}" if f else f"  {m}" for f, m in self.problems[:MAX_LISTED]]
        if n > MAX_LISTED:
            lines.append(f"  ... and {n - MAX_LISTED} more")
        return "\n".join([head, *lines])


class _Bad(Exception):
    """One file's problem, turned into a (file, message) entry by the caller."""


# ----------------------------------------------------------------------------------------------
# Reading images safely

_PIL_LOCK = threading.RLock()


def _open_image(path: Path, max_pixels: int | None, *, load: bool = True) -> Image.Image:
    """Open with PIL, checking the header size against max_pixels before decoding any pixels."""
    if not path.is_file():
        raise _Bad("file not found")
    if path.stat().st_size == 0:
        raise _Bad("file is empty (0 bytes)")
    # PIL's decompression-bomb guard stays on; only when the caller allows more pixels than PIL
    # does is its limit raised to max_pixels, for this file, under a lock (it is a global).
    raise_limit = bool(max_pixels and Image.MAX_IMAGE_PIXELS and max_pixels > Image.MAX_IMAGE_PIXELS)
    with _PIL_LOCK if raise_limit else contextlib.nullcontext():
        old = Image.MAX_IMAGE_PIXELS
        if raise_limit:
            Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            im = _open_header(path)
            w, h = im.size
            if max_pixels and w * h > max_pixels:
                im.close()
                raise _Bad(f"{w}x{h} = {w * h / 1e6:.1f} megapixels is over the limit of "
                           f"{max_pixels / 1e6:.1f} megapixels; downscale it (or raise max_pixels)")
            if w == 0 or h == 0:
                im.close()
                raise _Bad(f"image has no pixels ({w}x{h})")
            if load:
                try:
                    im.load()
                except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, struct.error...
                    im.close()
                    raise _Bad(f"image data is truncated or corrupt ({e})") from None
            return im
        finally:
            if raise_limit:
                Image.MAX_IMAGE_PIXELS = old


def _open_header(path: Path) -> Image.Image:
    """Image.open reads only the header; nothing is decoded yet."""
    try:
        with warnings.catch_warnings():
            # Sizes between PIL's limit and twice it only warn; our own check reports them.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError:
        limit = Image.MAX_IMAGE_PIXELS
        with _PIL_LOCK:  # read the size from the header alone (nothing is decoded), guard off briefly
            Image.MAX_IMAGE_PIXELS = None
            try:
                with Image.open(path) as im:
                    w, h = im.size
            finally:
                Image.MAX_IMAGE_PIXELS = limit
        raise _Bad(f"{w}x{h} = {w * h / 1e6:.1f} megapixels is too large to open safely; downscale it") from None
    except UnidentifiedImageError:
        raise _Bad("not a readable image (the file is corrupt or not an image format: "
                   "use PNG, JPEG, TIFF, BMP or WebP)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise _Bad(f"not a readable image ({e})") from None


def _header_size(path: Path, max_pixels: int | None) -> tuple[int, int]:
    """(width, height) from the header, without decoding."""
    im = _open_image(path, max_pixels, load=False)
    size = im.size
    im.close()
    return size


def _exif_transposed_size(im: Image.Image) -> tuple[int, int] | None:
    """The size the image would have once its EXIF orientation is applied, if that swaps axes."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:
        return None
    if orientation in (5, 6, 7, 8):
        return im.size[1], im.size[0]
    return None


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any PIL image -> HxWx3 uint8 RGB. 16-bit / float images are min-max scaled to 0-255."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros_like(a) if hi <= lo else (a - lo) * (255.0 / (hi - lo))
        a = np.clip(a + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=2))
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def _mask_values(im: Image.Image) -> np.ndarray:
    """Raw mask values as a 2-D integer array: palette indices for "P", gray levels otherwise.

    Colour masks whose three channels are equal are read as gray; an RGBA/LA mask whose colour is
    constant but whose alpha varies (a cut-out) is read from its alpha channel. Other colour
    masks are converted to gray with PIL's luminance formula (fine for dichotomous masks; the
    openvocab checker refuses them before this is called).
    """
    if im.mode == "P" or im.mode == "L":
        return np.asarray(im)
    if im.mode == "1":
        return np.asarray(im, dtype=np.uint8)
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return np.asarray(im).astype(np.int64)
    if im.mode == "F":
        return np.rint(np.asarray(im)).astype(np.int64)
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = np.asarray(im.convert("RGBA"))
        alpha = rgba[..., 3]
        colour = rgba[..., :3]
        if alpha.min() != alpha.max() and (colour == colour.reshape(-1, 3)[0]).all():
            return alpha
        return _gray_or_colour(colour)
    return _gray_or_colour(np.asarray(im.convert("RGB")))


def _gray_or_colour(rgb: np.ndarray) -> np.ndarray:
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return np.ascontiguousarray(rgb[..., 0])
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def _is_colour_mask(im: Image.Image) -> bool:
    if im.mode not in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
        return False
    rgb = np.asarray(im.convert("RGB"))
    return not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _binarize(values: np.ndarray) -> np.ndarray:
    """Dichotomous rule: > 127 when the mask's maximum is above 1 (0/255), else > 0 (0/1)."""
    threshold = 127 if values.max(initial=0) > 1 else 0
    return (values > threshold).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# COCO segmentations


def rle_decode(rle: dict) -> np.ndarray:
    """COCO RLE (counts as a list of ints or the compressed string) -> HxW uint8 0/1 mask.

    Runs alternate background/foreground starting with background, over the image in
    column-major (Fortran) order, as pycocotools stores them.
    """
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (bytes, str)):
        counts = _rle_counts_from_string(counts.decode("ascii") if isinstance(counts, bytes) else counts)
    counts = np.asarray(counts, dtype=np.int64)
    if (counts < 0).any():
        raise ValueError("RLE counts contain a negative run length")
    total = int(counts.sum())
    if total != h * w:
        raise ValueError(f"RLE counts cover {total} pixels but size {w}x{h} has {h * w}")
    values = np.zeros(len(counts), dtype=np.uint8)
    values[1::2] = 1
    flat = np.repeat(values, counts)
    return np.ascontiguousarray(flat.reshape(w, h).T)


def _rle_counts_from_string(s: str) -> list[int]:
    # pycocotools' compact form: each count is split into 5-bit groups, least significant first,
    # each stored as chr(48 + group), with bit 0x20 meaning "more groups follow" and bit 0x10 of the
    # last group the sign; from the third count on, the value stored is the difference to the count
    # two places earlier.
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("RLE string ends in the middle of a count")
            c = ord(s[p]) - 48
            if c < 0 or c > 63:
                raise ValueError(f"RLE string has an invalid character {s[p]!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_encode(mask: np.ndarray, *, compressed: bool = True) -> dict:
    """HxW mask (nonzero = foreground) -> COCO RLE dict; the inverse of `rle_decode`."""
    m = (np.asarray(mask) != 0)
    h, w = m.shape
    flat = m.T.reshape(-1).astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        runs = [0] + runs
    if not compressed:
        return {"size": [h, w], "counts": [int(r) for r in runs]}
    out = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return {"size": [h, w], "counts": "".join(out)}


def polygons_to_mask(polygons, height: int, width: int) -> np.ndarray:
    """COCO polygons (a list of flat [x1, y1, x2, y2, ...] lists) -> HxW uint8 0/1 mask.

    COCO puts pixel (row i, column j) at the square [j, j+1] x [i, i+1]; a pixel is inside when
    its centre (j + 0.5, i + 0.5) is inside a polygon (even-odd rule per polygon; polygons of one
    annotation are united). Sub-pixel vertices are kept exactly (OpenCV's fillPoly would round
    them and include both end pixels).
    """
    out = np.zeros((height, width), dtype=np.uint8)
    for poly in polygons:
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        x0, y0 = xy[:, 0], xy[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        keep = y0 != y1                                  # horizontal edges cross no row centre
        x0, y0, x1, y1 = x0[keep], y0[keep], x1[keep], y1[keep]
        if x0.size == 0:
            continue
        # rows whose centre i + 0.5 lies in [min(y), max(y)): each vertex is counted once
        first = np.clip(np.ceil(np.minimum(y0, y1) - 0.5), 0, height).astype(np.int64)
        stop = np.clip(np.ceil(np.maximum(y0, y1) - 0.5), 0, height).astype(np.int64)
        n = np.maximum(stop - first, 0)
        if n.sum() == 0:
            continue
        edge = np.repeat(np.arange(x0.size), n)
        rows = first[edge] + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
        yc = rows + 0.5
        xs = x0[edge] + (yc - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
        order = np.lexsort((xs, rows))
        rows, xs = rows[order], xs[order]
        r = rows[0::2]
        # columns whose centre j + 0.5 lies in [x_enter, x_leave)
        c0 = np.clip(np.ceil(xs[0::2] - 0.5), 0, width).astype(np.int64)
        c1 = np.clip(np.ceil(xs[1::2] - 0.5), 0, width).astype(np.int64)
        top, bottom = int(r.min()), int(r.max()) + 1
        diff = np.zeros((bottom - top, width + 1), dtype=np.int32)
        np.add.at(diff, (r - top, c0), 1)
        np.add.at(diff, (r - top, c1), -1)
        out[top:bottom] |= (np.cumsum(diff[:, :width], axis=1) > 0).astype(np.uint8)
    return out


def _check_segmentation(seg) -> str | None:
    """Why a COCO segmentation is malformed, or None."""
    if isinstance(seg, list):
        if not seg:
            return "has an empty segmentation list"
        for poly in seg:
            if not isinstance(poly, list) or not all(isinstance(v, (int, float)) for v in poly):
                return "has a polygon that is not a list of numbers"
            if len(poly) < 6 or len(poly) % 2:
                return f"has a polygon with {len(poly)} numbers (need x,y pairs, at least 3 points)"
        return None
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
            return "has an RLE segmentation without a valid 'size': [height, width]"
        if isinstance(counts, list):
            if not all(isinstance(v, int) for v in counts):
                return "has RLE 'counts' that are not all integers"
        elif not isinstance(counts, str):
            return "has RLE 'counts' that are neither a list of integers nor a string"
        try:
            rle_decode(seg)
        except (ValueError, KeyError) as e:
            return f"has an RLE segmentation that does not decode ({e})"
        return None
    return "has a 'segmentation' that is neither a polygon list nor an RLE dict"


def _coco_mask(anns, height: int, width: int, task: str) -> np.ndarray:
    """Rasterise one image's annotations: (category index, segmentation) pairs, in file order."""
    out = np.zeros((height, width), dtype=np.uint8)
    for value, seg in anns:
        if isinstance(seg, list):
            m = polygons_to_mask(seg, height, width)
        else:
            m = rle_decode(seg)
        out[m != 0] = 1 if task == "dichotomous" else value
    return out


# ----------------------------------------------------------------------------------------------
# Samples and the dataset


class _Storage:
    """An extracted zip's temporary folder; removed once nothing refers to it any more."""

    def __init__(self, path: Path):
        self.path = path
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(path), True)

    def cleanup(self):
        self._finalizer()

    def __reduce__(self):  # a copy in another process must not own (and delete) the folder
        return (_BorrowedStorage, (str(self.path),))


class _BorrowedStorage:
    def __init__(self, path):
        self.path = Path(path)

    def cleanup(self):
        pass


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


class Dataset(Sequence):
    """A validated list of `Sample`s.

    Attributes: task, classes (list of names; index = mask value; ["background", "foreground"]
    for dichotomous), ignore_index (int or None; None for dichotomous), source (what was loaded),
    given_heldout (a Dataset from a val/ or heldout/ folder, or None), skipped ((file, reason)
    for files that were not used, e.g. README.txt in images/).
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
          a path (str/Path) -> load that folder or zip with the same task as the held-out set;
          a Dataset -> use it as the held-out set.
        A fraction or count splits this dataset's own samples (a given held-out folder is then
        not used). Random choices depend only on `seed` and the sorted stems.
        """
        if holdout is None:
            if self.given_heldout is not None:
                return self, self.given_heldout
            holdout = 0.3
        if isinstance(holdout, Dataset):
            return self, self._check_compatible(holdout)
        if isinstance(holdout, (str, Path)):
            other = load_dataset(holdout, task=self.task)
            return self, self._check_compatible(other)
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
            raise TypeError(f"holdout must be a fraction, a count, a list of stems, a path or a "
                            f"Dataset, not {type(holdout).__name__}")
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


# ----------------------------------------------------------------------------------------------
# Finding files


def _visible(p: Path) -> bool:
    return not p.name.startswith(".") and p.name.lower() not in JUNK_NAMES


def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTS


def _children(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if _visible(p))
    except OSError:
        return []


def _find_dir(folder: Path, name: str) -> Path | None:
    """A child folder by name, ignoring case (Images/ works like images/)."""
    exact = folder / name
    if exact.is_dir():
        return exact
    for p in _children(folder):
        if p.is_dir() and p.name.lower() == name:
            return p
    return None


def _coco_candidates(folder: Path) -> list[Path]:
    found = [p for p in _children(folder) if p.is_file() and p.suffix.lower() == ".json"
             and p.name.lower() != "classes.json"]
    ann = _find_dir(folder, "annotations")
    if ann is not None:
        found += [p for p in _children(ann) if p.is_file() and p.suffix.lower() == ".json"]
    return found


def _layout(folder: Path):
    """("pairs", images_dir, masks_dir) | ("coco", [json candidates]) | None."""
    for img_name, mask_name in PAIR_LAYOUTS:
        img, msk = _find_dir(folder, img_name), _find_dir(folder, mask_name)
        if img is not None and msk is not None:
            return ("pairs", img, msk)
    jsons = _coco_candidates(folder)
    if jsons:
        return ("coco", jsons)
    return None


def _heldout_dir(folder: Path) -> Path | None:
    for name in HELDOUT_DIRS:
        d = _find_dir(folder, name)
        if d is not None:
            return d
    return None


def _descend_wrappers(folder: Path) -> Path:
    """Skip folders that only wrap the dataset (a zip of 'mydata/' holds mydata/images/...)."""
    for _ in range(4):
        if _layout(folder) is not None or _find_dir(folder, "train") is not None:
            return folder
        kids = _children(folder)
        dirs = [p for p in kids if p.is_dir()]
        files = [p for p in kids if p.is_file() and (_is_image_name(p) or p.suffix.lower() == ".json")]
        if len(dirs) == 1 and not files:
            folder = dirs[0]
        else:
            return folder
    return folder


def _describe(folder: Path) -> str:
    kids = _children(folder)
    if not kids:
        return "the folder is empty"
    names = [p.name + ("/" if p.is_dir() else "") for p in kids[:12]]
    more = f", ... ({len(kids) - 12} more)" if len(kids) > 12 else ""
    return "found " + ", ".join(names) + more


# ----------------------------------------------------------------------------------------------
# Zips


def _zip_problems(zf: zipfile.ZipFile) -> list[tuple[str, str]]:
    problems = []
    total = 0
    infos = zf.infolist()
    if len(infos) > ZIP_MAX_ENTRIES:
        problems.append(("", f"the zip has {len(infos)} entries; at most {ZIP_MAX_ENTRIES} are accepted"))
    for info in infos:
        name = info.filename
        norm = name.replace("\\", "/")
        parts = [p for p in norm.split("/") if p not in ("", ".")]
        if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm) or ".." in parts:
            problems.append((name, "zip entry points outside the dataset folder (absolute path or "
                                   "'..'); refusing to extract this zip"))
            continue
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            problems.append((name, "zip entry is a symbolic link; refusing to extract this zip"))
            continue
        if info.flag_bits & 0x1:
            problems.append((name, "zip entry is password-protected; zip the dataset without a password"))
            continue
        total += info.file_size
    if total > ZIP_MAX_BYTES:
        problems.append(("", f"the zip would unpack to {total / 2**30:.1f} GiB; at most "
                             f"{ZIP_MAX_BYTES / 2**30:.0f} GiB is accepted"))
    return problems


def _extract_zip(path: Path) -> _Storage:
    """Check every entry, then extract into a new temporary folder (removed again on failure)."""
    label = path.name
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DatasetError([(label, f"not a readable zip file ({e})")], source=label) from None
    with zf:
        problems = _zip_problems(zf)
        if problems:
            raise DatasetError(problems, source=label)
        tmp = Path(tempfile.mkdtemp(prefix="adapt-dataset-"))
        storage = _Storage(tmp)
        try:
            for info in zf.infolist():
                parts = [p for p in info.filename.replace("\\", "/").split("/") if p not in ("", ".")]
                if not parts or any(p.startswith("._") or p.lower() in JUNK_NAMES for p in parts):
                    continue
                target = tmp.joinpath(*parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                with zf.open(info) as src, open(target, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > info.file_size:  # a lying header: stop a zip bomb early
                            raise DatasetError([(info.filename, "zip entry is larger than its header "
                                                 "says; the zip is corrupt")], source=label)
                        dst.write(chunk)
        except DatasetError:
            storage.cleanup()
            raise
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError) as e:
            storage.cleanup()
            raise DatasetError([(label, f"the zip could not be extracted ({e})")], source=label) from None
        except BaseException:
            storage.cleanup()
            raise
    return storage


# ----------------------------------------------------------------------------------------------
# Collecting candidates (pairs and COCO)


@dataclass
class _Candidate:
    stem: str
    image_path: Path
    image_name: str
    mask_name: str
    mask_path: Path | None = None
    coco: list | None = None              # [(class value, segmentation), ...]
    coco_label: str = ""                  # "annotations.json (image 'x.jpg', id 3)"
    json_size: tuple[int, int] | None = None   # (w, h) the COCO file claims


class _Loader:
    def __init__(self, top: Path, label: str, task: str, max_pixels: int):
        self.top = top          # folder the display names are relative to
        self.label = label      # what the user gave (folder or zip name)
        self.task = task
        self.max_pixels = max_pixels
        self.problems: list[tuple[str, str]] = []
        self.skipped: list[tuple[str, str]] = []

    def name(self, p: Path) -> str:
        try:
            return p.relative_to(self.top).as_posix()
        except ValueError:
            return p.as_posix()

    def problem(self, file, message):
        self.problems.append((file if isinstance(file, str) else self.name(file), message))

    # ---- pairs

    def _files_by_stem(self, folder: Path) -> dict[str, list[Path]]:
        by_stem: dict[str, list[Path]] = {}
        for p in _children(folder):
            if p.is_dir():
                self.skipped.append((self.name(p) + "/", "sub-folder ignored"))
            elif _is_image_name(p):
                by_stem.setdefault(p.stem, []).append(p)
            else:
                self.skipped.append((self.name(p), "not an image file (accepted: "
                                     + " ".join(IMAGE_EXTS) + ")"))
        return by_stem

    def collect_pairs(self, img_dir: Path, mask_dir: Path) -> list[_Candidate]:
        images = self._files_by_stem(img_dir)
        masks = self._files_by_stem(mask_dir)
        for by_stem in (images, masks):
            for stem, files in by_stem.items():
                if len(files) > 1:
                    names = " and ".join(self.name(f) for f in files)
                    self.problem(files[0], f"{names} share the name '{stem}'; keep only one of them")
        # Masks named cat_mask.png / CAT.png still pair with cat.jpg when that is unambiguous.
        mask_for: dict[str, str] = {s: s for s in masks if s in images}
        loose_images = {s.lower(): s for s in images if s not in mask_for}
        for m in sorted(masks):
            if m in mask_for.values():
                continue
            key = m.lower()
            for suffix in MASK_SUFFIXES:
                if key.endswith(suffix) and key[: -len(suffix)] in loose_images:
                    key = key[: -len(suffix)]
                    break
            s = loose_images.pop(key, None)
            if s is not None:
                mask_for[s] = m
        used_masks = set(mask_for.values())
        out = []
        for stem in sorted(images):
            img = images[stem][0]
            if stem not in mask_for:
                self.problem(img, f"no mask for this image: expected a file named '{stem}' "
                                  f"(any image extension) in {self.name(mask_dir)}/")
                continue
            mp = masks[mask_for[stem]][0]
            out.append(_Candidate(stem, img, self.name(img), self.name(mp), mask_path=mp))
        for m in sorted(masks):
            if m not in used_masks:
                self.problem(masks[m][0], f"no image for this mask: expected a file named '{m}' "
                                          f"(any image extension) in {self.name(img_dir)}/")
        return out

    # ---- COCO

    def collect_coco(self, folder: Path, jsons: list[Path]):
        """-> (candidates, classes or None). classes only for openvocab."""
        docs = []
        for j in jsons:
            try:
                if j.stat().st_size > JSON_MAX_BYTES:
                    self.problem(j, f"JSON file is larger than {JSON_MAX_BYTES >> 20} MB")
                    continue
                data = json.loads(j.read_text(encoding="utf-8-sig"))
            except json.JSONDecodeError as e:
                self.problem(j, f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})")
                continue
            except (OSError, UnicodeDecodeError) as e:
                self.problem(j, f"could not be read ({e})")
                continue
            if isinstance(data, dict) and "images" in data and "annotations" in data:
                docs.append((j, data))
            else:
                self.skipped.append((self.name(j), "not a COCO file (no 'images' and 'annotations')"))
        if not docs:
            return [], None
        if len(docs) > 1:
            names = ", ".join(self.name(j) for j, _ in docs)
            self.problem(self.name(folder) + "/" if folder != self.top else self.label,
                         f"found several COCO annotation files ({names}); keep exactly one per folder")
            return [], None
        jpath, data = docs[0]
        jname = self.name(jpath)
        images_dir = _find_dir(folder, "images") or folder

        def bad(msg):
            self.problem(jname, msg)

        images, anns, cats = data.get("images"), data.get("annotations"), data.get("categories", [])
        if not isinstance(images, list) or not isinstance(anns, list) or not isinstance(cats, list):
            bad("'images', 'annotations' and 'categories' must be JSON lists")
            return [], None

        # categories -> class values
        cat_value: dict = {}
        classes = None
        good_cats = []
        for c in cats:
            if not isinstance(c, dict) or "id" not in c or not isinstance(c.get("name"), str):
                bad(f"category {c!r} needs an 'id' and a 'name'")
                continue
            good_cats.append(c)
        if self.task == "openvocab":
            if not good_cats:
                bad("has no 'categories'; the openvocab task needs category names")
            classes = ["background"]
            for c in sorted(good_cats, key=lambda c: (str(type(c["id"])), c["id"])):
                name = c["name"].strip()
                if name.lower() == "background":
                    cat_value[c["id"]] = 0
                    continue
                if name in classes:
                    bad(f"category name '{name}' is used twice")
                    continue
                cat_value[c["id"]] = len(classes)
                classes.append(name)
            if len(classes) > 255:
                bad(f"has {len(classes) - 1} categories; at most 254 fit an 8-bit label map")
        else:
            for c in good_cats:
                cat_value[c["id"]] = 1

        by_id: dict = {}
        for im in images:
            if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
                bad(f"image entry {str(im)[:80]} needs an 'id' and a 'file_name'")
                continue
            if im["id"] in by_id:
                bad(f"image id {im['id']} is used twice")
                continue
            by_id[im["id"]] = im

        per_image: dict = {i: [] for i in by_id}
        for k, a in enumerate(anns):
            if not isinstance(a, dict):
                bad(f"annotation #{k} is not a JSON object")
                continue
            aid = a.get("id", f"#{k}")
            if a.get("image_id") not in by_id:
                bad(f"annotation {aid} refers to image id {a.get('image_id')!r}, which is not in 'images'")
                continue
            if "segmentation" not in a or a["segmentation"] in (None, [], {}):
                bad(f"annotation {aid} has no 'segmentation' (boxes alone cannot train a mask)")
                continue
            why = _check_segmentation(a["segmentation"])
            if why:
                bad(f"annotation {aid} {why}")
                continue
            cid = a.get("category_id")
            if cid not in cat_value:
                if self.task == "openvocab" or good_cats:
                    bad(f"annotation {aid} has category_id {cid!r}, which is not in 'categories'")
                    continue
                value = 1
            else:
                value = cat_value[cid]
            per_image[a["image_id"]].append((value, a["segmentation"]))

        out = []
        listed: set[Path] = set()
        stems_seen: dict[str, str] = {}
        for iid, im in by_id.items():
            fname = im["file_name"]
            tries = [images_dir / fname, jpath.parent / fname, folder / fname,
                     images_dir / PurePosixPath(fname.replace("\\", "/")).name]
            path = next((t for t in tries if t.is_file()), None)
            if path is None:
                where = self.name(images_dir) + "/" if images_dir != self.top else "the dataset folder"
                bad(f"image '{fname}' (id {iid}) not found in {where}")
                continue
            listed.add(path.resolve())
            stem = path.stem
            if stem in stems_seen:
                bad(f"images '{stems_seen[stem]}' and '{fname}' have the same name '{stem}'; rename one")
                continue
            stems_seen[stem] = fname
            w, h = im.get("width"), im.get("height")
            json_size = (w, h) if isinstance(w, int) and isinstance(h, int) else None
            out.append(_Candidate(stem, path, self.name(path), f"{jname} (image '{fname}', id {iid})",
                                  coco=per_image[iid], coco_label=f"{jname} (image '{fname}', id {iid})",
                                  json_size=json_size))
        # Image files the JSON does not mention have no annotation at all.
        for p in _children(images_dir):
            if p.is_file() and _is_image_name(p) and p.resolve() not in listed:
                self.problem(p, f"image is not listed in {jname}, so it has no mask; add it or remove it")
        return out, classes


def _read_classes(path: Path, loader: _Loader):
    """classes.json -> (classes, ignore_index) or (None, None) after reporting why."""
    name = loader.name(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        loader.problem(name, f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})")
        return None, None
    except (OSError, UnicodeDecodeError) as e:
        loader.problem(name, f"could not be read ({e})")
        return None, None
    ignore = DEFAULT_IGNORE
    if isinstance(data, dict):
        if "classes" not in data:
            loader.problem(name, 'expected a list of class names, or {"classes": [...], "ignore_index": 255}')
            return None, None
        ignore = data.get("ignore_index", DEFAULT_IGNORE)
        data = data["classes"]
        if ignore is not None and (isinstance(ignore, bool) or not isinstance(ignore, int)
                                   or not 0 <= ignore <= 255):
            loader.problem(name, f"ignore_index must be an integer 0-255 or null, got {ignore!r}")
            return None, None
    if not isinstance(data, list) or not data or not all(isinstance(c, str) and c.strip() for c in data):
        loader.problem(name, "classes must be a non-empty list of class names (strings); "
                             "the position in the list is the mask value")
        return None, None
    names = [c.strip() for c in data]
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        loader.problem(name, f"class names listed twice: {', '.join(dupes)}")
        return None, None
    limit = ignore if ignore is not None else 256
    if len(names) > limit:
        loader.problem(name, f"{len(names)} classes do not fit below ignore_index {ignore} in an 8-bit mask")
        return None, None
    return names, ignore


# ----------------------------------------------------------------------------------------------
# Validation of candidates -> samples


def _fmt_size(wh) -> str:
    return f"{wh[0]}x{wh[1]}"


def _fmt_values(vals) -> str:
    vals = [int(v) for v in vals]
    shown = ", ".join(str(v) for v in vals[:10])
    return shown + (f" (and {len(vals) - 10} more)" if len(vals) > 10 else "")


def _validate(cands: list[_Candidate], loader: _Loader, classes, ignore_index,
              cache_bytes: int, storage) -> list[Sample]:
    task, max_pixels = loader.task, loader.max_pixels
    # Pass 1: headers only (size limit, readability, size agreement), so nothing big is decoded.
    headers = []
    for c in cands:
        try:
            isize = _header_size(c.image_path, max_pixels)
        except _Bad as e:
            loader.problem(c.image_name, str(e))
            isize = None
        msize = None
        if c.mask_path is not None:
            try:
                msize = _header_size(c.mask_path, max_pixels)
            except _Bad as e:
                loader.problem(c.mask_name, str(e))
        headers.append((isize, msize))
    total = sum(4 * s[0] * s[1] for s, _ in headers if s)
    keep_in_memory = total <= cache_bytes

    samples = []
    for c, (isize, msize) in zip(cands, headers):
        if isize is None or (c.mask_path is not None and msize is None):
            continue
        try:
            im = _open_image(c.image_path, max_pixels)
        except _Bad as e:
            loader.problem(c.image_name, str(e))
            continue
        transpose = False
        if c.mask_path is not None and msize != isize:
            rotated = _exif_transposed_size(im)
            if rotated == msize:
                transpose = True   # the mask was drawn on the photo as a viewer shows it
            else:
                loader.problem(c.mask_name, f"size {_fmt_size(msize)} does not match image "
                                            f"{c.image_name} ({_fmt_size(isize)})")
                continue
        if c.coco is not None:
            if c.json_size is not None and tuple(c.json_size) != tuple(isize):
                rotated = _exif_transposed_size(im)
                if rotated != tuple(c.json_size):
                    loader.problem(c.coco_label, f"the JSON says {_fmt_size(c.json_size)} but image "
                                                 f"{c.image_name} is {_fmt_size(isize)}")
                    continue
                transpose = True
        try:
            rgb = _to_rgb(ImageOps.exif_transpose(im) if transpose else im)
        except Exception as e:
            loader.problem(c.image_name, f"image could not be converted to RGB ({e})")
            continue
        h, w = rgb.shape[:2]

        if c.coco is not None:
            bad_rle = [seg for _, seg in c.coco if isinstance(seg, dict) and
                       tuple(int(v) for v in seg["size"]) != (h, w)]
            if bad_rle:
                sz = bad_rle[0]["size"]
                loader.problem(c.coco_label, f"RLE size {sz[1]}x{sz[0]} (width x height) does not "
                                             f"match image {c.image_name} ({w}x{h})")
                continue
            mask = _coco_mask(c.coco, h, w, task)
            where = c.coco_label
            if task == "dichotomous" and not mask.any():
                loader.problem(where, "no foreground: the image has no annotations (empty mask)"
                               if not c.coco else "no foreground: the annotations cover no pixel")
                continue
            if task == "dichotomous" and mask.all():
                loader.problem(where, "mask is all foreground (nothing to tell apart)")
                continue
        else:
            try:
                mim = _open_image(c.mask_path, max_pixels)
            except _Bad as e:
                loader.problem(c.mask_name, str(e))
                continue
            if task == "openvocab" and _is_colour_mask(mim):
                loader.problem(c.mask_name, "mask is a colour (RGB) image; openvocab masks must be "
                                            "index PNGs (gray value = class id) or palette PNGs")
                continue
            values = _mask_values(mim)
            if task == "dichotomous":
                mask = _binarize(values)
                if not mask.any():
                    top = int(values.max(initial=0))
                    hint = ("the mask is all zero" if top == 0 else
                            f"its largest value is {top}; foreground must be > 127 in 0-255 masks "
                            f"or 1 in 0/1 masks")
                    if 1 < top <= 127 and len(np.unique(values)) <= 32:
                        hint += "; if the values are class ids, load it with task='openvocab'"
                    loader.problem(c.mask_name, f"empty mask: no foreground pixels ({hint})")
                    continue
                if mask.all():
                    loader.problem(c.mask_name, "mask is all foreground (every pixel is set); "
                                                "the object must not fill the whole image")
                    continue
            else:
                present = np.unique(values)
                allowed = set(range(len(classes)))
                if ignore_index is not None:
                    allowed.add(ignore_index)
                wrong = [v for v in present.tolist() if v not in allowed]
                if wrong:
                    ign = f"; {ignore_index} = ignore" if ignore_index is not None else ""
                    jpeg = (" (JPEG compression changes pixel values: save label maps as PNG)"
                            if c.mask_path.suffix.lower() in (".jpg", ".jpeg") else "")
                    what = (f"mask value {wrong[0]} is not a class id" if len(wrong) == 1 else
                            f"mask values {_fmt_values(wrong)} are not class ids")
                    loader.problem(c.mask_name, f"{what} "
                                   f"(classes.json lists {len(classes)} classes, ids 0-{len(classes) - 1}"
                                   f"{ign}){jpeg}")
                    continue
                mask = values.astype(np.uint8)
                if ignore_index is not None and (mask == ignore_index).all():
                    loader.problem(c.mask_name,
                                   f"every pixel is {ignore_index} (ignore): nothing is labelled")
                    continue
        sample = Sample(c.stem, c.image_name, c.mask_name, h, w, task,
                        np.bincount(mask.reshape(-1), minlength=256).astype(np.int64),
                        _image_path=c.image_path, _exif_transpose=transpose, _mask_path=c.mask_path,
                        _coco=(c.coco, h, w) if c.coco is not None else None, _storage=storage,
                        _max_pixels=max_pixels)
        if keep_in_memory:
            sample._image, sample._mask = rgb, mask
        samples.append(sample)
    return samples


# ----------------------------------------------------------------------------------------------
# Entry point


def load_dataset(path, *, task: str = "dichotomous", max_pixels: int | None = 40_000_000,
                 cache_bytes: int = 1 << 30) -> Dataset:
    """Load and validate a dataset folder or .zip; raise `DatasetError` listing every problem.

    task: "dichotomous" (binary masks, 0/1) or "openvocab" (label maps + class names).
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
        storage = _extract_zip(path)
        top = storage.path
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
    return ds


def _no_dataset_message(folder: Path) -> str:
    hint = ""
    for img_name, mask_name in PAIR_LAYOUTS:
        img = _find_dir(folder, img_name)
        if img is not None and _find_dir(folder, mask_name) is None:
            hint = f" There is an {img.name}/ folder but no {mask_name}/ folder next to it."
            break
    return f"no dataset found ({_describe(folder)}).{hint} {ACCEPTED_LAYOUTS}"


def load_image(path, *, max_pixels: int | None = 40_000_000, exif_transpose: bool = True) -> np.ndarray:
    """One image file -> HxWx3 uint8 RGB, with the same checks and messages as load_dataset.

    exif_transpose: apply the EXIF orientation (what photo viewers show), for prediction on a
    single photo. Raises DatasetError (a ValueError) naming the file.
    """
    path = Path(path)
    try:
        im = _open_image(path, max_pixels)
        return _to_rgb(ImageOps.exif_transpose(im) if exif_transpose else im)
    except _Bad as e:
        raise DatasetError([(str(path), str(e))], source=path.name) from None


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
        classes, ignore_index = ["background", "foreground"], None
    given = None
    if "heldout" in samples:
        given = Dataset(samples["heldout"], task=task, classes=classes, ignore_index=ignore_index,
                        source=f"{label}/{loader.name(held)}", storage=storage)
    return Dataset(samples["main"], task=task, classes=classes, ignore_index=ignore_index,
                   source=label, given_heldout=given, skipped=loader.skipped, storage=storage)


def _validate_files_only(cands, loader: _Loader):
    for c in cands:
        for p, name in ((c.image_path, c.image_name), (c.mask_path, c.mask_name)):
            if p is None:
                continue
            try:
                _open_image(p, loader.max_pixels).close()
            except _Bad as e:
                loader.problem(name, str(e))
