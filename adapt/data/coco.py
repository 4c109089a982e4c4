"""COCO segmentation codecs: RLE and polygons to masks (and masks back to RLE), and their checks.

`rle_decode` / `rle_encode` read and write COCO run-length encodings (counts as a list of ints or
pycocotools' compressed string) through pycocotools, the reference codec; `polygons_to_mask`
rasterises polygons with COCO's pixel convention. `_check_segmentation` says why an annotation is
malformed (used while collecting a COCO file, so every bad annotation is reported before anything
is decoded) and `_coco_mask` rasterises one image's annotations, both at validation and when a lazy
`Sample` reads its mask.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as coco_rle

__all__ = ["rle_decode", "rle_encode", "polygons_to_mask"]

MAX_RUN = 2**32 - 1  # pycocotools keeps run lengths as 32-bit unsigned ints


def rle_decode(rle: dict) -> np.ndarray:
    """COCO RLE (counts as a list of ints or the compressed string) -> HxW uint8 0/1 mask.

    Runs alternate background/foreground starting with background, over the image in
    column-major (Fortran) order, as pycocotools stores them. The counts are checked first
    (`_checked_rle`): pycocotools' decoder trusts them.
    """
    return np.ascontiguousarray(coco_rle.decode(_checked_rle(rle)))


def _checked_rle(rle: dict) -> dict:
    """The RLE as pycocotools' decoder takes it (compressed, bytes), after checking that its runs
    are non-negative, fit pycocotools' 32-bit counts and cover exactly its h*w pixels: for fewer,
    pycocotools' decode leaves the rest of the mask as uninitialised memory; for more, it raises
    (since 2.0.5) a ValueError that does not say why."""
    h, w = (int(v) for v in rle["size"])
    if h < 0 or w < 0:
        raise ValueError(f"RLE size {w}x{h} has a negative side")
    counts = rle["counts"]
    compressed = isinstance(counts, (bytes, str))
    if compressed:
        text = counts.decode("ascii") if isinstance(counts, bytes) else counts
        runs = np.asarray(_rle_counts_from_string(text), dtype=np.int64)
    else:
        runs = np.asarray(counts, dtype=np.int64)
    if (runs < 0).any():
        raise ValueError("RLE counts contain a negative run length")
    if (runs > MAX_RUN).any():
        raise ValueError(f"RLE counts contain a run longer than {MAX_RUN} pixels")
    total = int(runs.sum())
    if total != h * w:
        raise ValueError(f"RLE counts cover {total} pixels but size {w}x{h} has {h * w}")
    if compressed:
        return {"size": [h, w], "counts": text.encode("ascii")}
    return coco_rle.frPyObjects({"size": [h, w], "counts": runs.tolist()}, h, w)


def _rle_counts_from_string(s: str) -> list[int]:
    """The run lengths in pycocotools' compressed string. pycocotools reads them only inside its C
    decoder, which trusts them (see `_checked_rle`), and offers no way to read them from Python, so
    this reader exists to check them before decoding (and to give `rle_encode` its uncompressed
    form)."""
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
    m = np.asfortranarray(np.asarray(mask) != 0, dtype=np.uint8)
    rle = coco_rle.encode(m)
    text = rle["counts"].decode("ascii")
    h, w = m.shape
    return {"size": [h, w], "counts": text if compressed else _rle_counts_from_string(text)}


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
            _checked_rle(seg)
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
