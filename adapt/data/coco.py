"""COCO segmentation codecs: RLE and polygons to masks (and masks back to RLE), and their checks.

`rle_decode` / `rle_encode` read and write COCO run-length encodings (counts as a list of ints or
pycocotools' compressed string) without needing pycocotools; `polygons_to_mask` rasterises
polygons with COCO's pixel convention. `_check_segmentation` says why an annotation is malformed
(used while collecting a COCO file, so every bad annotation is reported before anything is
decoded) and `_coco_mask` rasterises one image's annotations, both at validation and when a lazy
`Sample` reads its mask. Only numpy is needed here.
"""

from __future__ import annotations

import numpy as np

__all__ = ["rle_decode", "rle_encode", "polygons_to_mask"]


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
