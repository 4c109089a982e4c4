"""Coarse-to-fine refinement of a foreground probability map with overlapping crops.

A model that sees the whole image at its own input size (256 px for the bundled tiny SAM, 1024 for
the official ones) loses everything finer than a pixel of that size: hairs, serrations, thin
structures. The refinement here runs the model again on crops of the source image at a higher
resolution, only where the coarse map is uncertain, and blends the crops back without seams:

1. ``plan_crops``: the uncertain band (coarse probability strictly between ``low`` and ``high``,
   and the 0.5 contour, grown by ``margin`` source pixels; a confident interior stays out of it, as a
   crop inside a uniform region has no context to tell foreground from background) is found on a reduced copy of the map; crops of side ``side``
   sit on a regular grid with at least 50% overlap; every grid crop touching the band is chosen.
   If more than ``max_crops`` would be chosen, the crops grow (x1.25) until they fit: the cost is
   bounded, the zoom is what the budget allows.
2. ``refine``: the chosen crops are predicted ``batch`` at a time by a caller-given function
   ``predict(boxes) -> [prob]`` (so the blending is testable without a model), and accumulated with
   raised-cosine weights that fall to zero at crop edges inside the image (not at the image's own
   border, where there is no neighbour to hand over to). Where crops overlap at 50%, the weights
   sum to one; the blend is the weighted mean. A crop whose gross shape contradicts the coarse map
   (``crop_trust``: a crop sees less context and can lose the object) is weighed down to nothing;
   the coarse map then stays, reached smoothly like any other uncovered place.
3. The refined map replaces the coarse one through a transition weight that is the product of the
   crop coverage (the weight sum, saturating) and a feathered band mask, both continuous, so the
   result has no step at crop borders nor at the edge of the refined band.

Memory: besides the coarse map (refined in place when asked), the weighted sums cover only the
rows that crops still to come can reach (about one crop side; rows above are blended into the
output as the crops move down the image, in strips), at most ``batch`` crop predictions are alive
at once, and the band is found on a copy of at most 1024 px. A 4000 x 3000 image with crops of
1250 px holds two 1250 x 4000 float sums and four crops, not a stack of full-size maps.

Boxes are ``(y0, x0, y1, x1)`` in source pixels, end-exclusive.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

Box = tuple[int, int, int, int]


@dataclass
class RefineConfig:
    zoom: float = 4.0  # crops see the source this many times finer than the global pass...
    min_side: int = 0  # ...but a crop is never smaller than this (the model's input size)
    overlap: float = 0.5  # at least this fraction of a crop is shared with its grid neighbour
    low: float = 0.2  # the band: coarse probability in (low, high) or on the 0.5 contour ...
    high: float = 0.8
    margin: int = 0  # ... grown by this many source pixels (0: a quarter of a crop)
    max_crops: int = 32  # crops grow until no more than this many are needed
    batch: int = 4  # crops predicted (and held in memory) at once
    band_only: bool = True  # False: crops replace the coarse map wherever they cover it
    trust: bool = True  # weigh each crop by how well its coarse shape agrees (crop_trust)


@dataclass
class CropPlan:
    side: int  # nominal crop side in source pixels
    boxes: list[Box] = field(default_factory=list)
    band_fraction: float = 0.0  # share of the image in the uncertain band
    grid: int = 0  # grid crops before selection


def grid_starts(length: int, side: int, overlap: float = 0.5) -> list[int]:
    """Start offsets of crops of `side` covering [0, length) with at least `overlap` shared."""
    if side >= length:
        return [0]
    stride = max(1, int(side * (1 - overlap)))
    count = math.ceil((length - side) / stride) + 1
    return sorted({round(v) for v in np.linspace(0, length - side, count)})


def crop_window(box: Box, shape: tuple[int, int]) -> np.ndarray:
    """Raised-cosine blending weight (h, w) float32 for a crop: sin^2 falling to ~0 at each edge
    that lies inside the image, flat (1) towards an edge on the image border."""
    y0, x0, y1, x1 = box
    H, W = shape
    wy = _axis_window(y1 - y0, taper_start=y0 > 0, taper_end=y1 < H)
    wx = _axis_window(x1 - x0, taper_start=x0 > 0, taper_end=x1 < W)
    return np.outer(wy, wx).astype(np.float32)


def _axis_window(n: int, taper_start: bool, taper_end: bool) -> np.ndarray:
    t = (np.arange(n) + 0.5) / n
    w = np.sin(np.pi * t) ** 2  # the Hann window: shifted by half its length, two sum to one
    half = np.arange(n) >= n / 2
    if not taper_start:
        w = np.where(half, w, 1.0)
    if not taper_end:
        w = np.where(half, 1.0, w)
    return w


def _reduced(prob: np.ndarray, limit: int = 1024) -> tuple[np.ndarray, float]:
    """A copy whose long side is at most `limit` (area-averaged) and the factor it was shrunk by."""
    H, W = prob.shape
    f = max(1.0, max(H, W) / limit)
    if f == 1.0:
        return prob.astype(np.float32, copy=False), 1.0
    small = cv2.resize(
        prob.astype(np.float32, copy=False), (max(1, round(W / f)), max(1, round(H / f))), interpolation=cv2.INTER_AREA
    )
    return small, f


def uncertain_band(coarse: np.ndarray, low: float, high: float, margin: float) -> tuple[np.ndarray, float]:
    """The uncertain band on a reduced grid (bool) and the reduction factor (source px per cell)."""
    small, f = _reduced(coarse)
    band = (small > low) & (small < high)
    fg = small > 0.5  # the 0.5 contour itself, however sharp the map is there
    band[:, 1:] |= fg[:, 1:] != fg[:, :-1]
    band[1:, :] |= fg[1:, :] != fg[:-1, :]
    if band.any() and not band.all():  # grow by `margin`: within that distance of a band cell
        band = cv2.distanceTransform((~band).astype(np.uint8), cv2.DIST_L2, 5) <= max(1.0, margin / f)
    return band, f


def plan_crops(coarse: np.ndarray, model_size: int, cfg: RefineConfig | None = None) -> CropPlan:
    """Which crops to refine: the grid crops that touch the uncertain band of `coarse` (H, W)."""
    cfg = cfg or RefineConfig()
    H, W = coarse.shape
    side = max(cfg.min_side, model_size, math.ceil(max(H, W) / cfg.zoom))
    if side >= max(H, W):  # one crop is the whole image: the global pass already did that
        return CropPlan(side=max(H, W))
    margin = cfg.margin or side / 4
    band, f = uncertain_band(coarse, cfg.low, cfg.high, margin)
    if not band.any():
        return CropPlan(side=side)
    # the number of band cells in each reduced-grid rectangle, by a summed-area table
    sat = np.pad(band.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    bh, bw = band.shape
    while True:
        boxes, grid = [], 0
        for y0 in grid_starts(H, min(side, H), cfg.overlap):
            for x0 in grid_starts(W, min(side, W), cfg.overlap):
                grid += 1
                y1, x1 = min(H, y0 + side), min(W, x0 + side)
                a, b = min(bh, int(y0 / f)), min(bh, max(int(y0 / f) + 1, math.ceil(y1 / f)))
                c, d = min(bw, int(x0 / f)), min(bw, max(int(x0 / f) + 1, math.ceil(x1 / f)))
                if sat[b, d] - sat[a, d] - sat[b, c] + sat[a, c] > 0:
                    boxes.append((y0, x0, y1, x1))
        if len(boxes) <= cfg.max_crops or side >= max(H, W):
            break
        side = min(max(H, W), math.ceil(side * 1.25))
    return CropPlan(side=side, boxes=boxes, band_fraction=float(band.mean()), grid=grid)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


class BandFeather:
    """A continuous weight in [0, 1]: 1 on the uncertain band, falling to 0 over about `margin`
    pixels outside it. Computed once on the reduced grid, read out at the source resolution one
    strip at a time (never a full-size float map)."""

    def __init__(self, coarse: np.ndarray, plan: CropPlan, cfg: RefineConfig):
        margin = cfg.margin or plan.side / 4
        band, self.f = uncertain_band(coarse, cfg.low, cfg.high, margin / 2)
        # blur the (already grown) band: the weight is 1 inside it and reaches 0 a further margin/2 out
        k = max(3, 2 * round(margin / (2 * self.f)) + 1)
        soft = cv2.blur(band.astype(np.float32), (k, k), borderType=cv2.BORDER_REPLICATE)
        self.soft = _smoothstep(2 * soft)
        self.shape = coarse.shape

    def __call__(self, region: Box) -> np.ndarray:
        y0, x0, y1, x1 = region
        if self.f == 1.0:
            return self.soft[y0:y1, x0:x1]
        H, W = self.shape
        # source pixel centres in reduced-grid coordinates, bilinear in between
        ys = ((np.arange(y0, y1) + 0.5) * self.soft.shape[0] / H - 0.5).astype(np.float32)
        xs = ((np.arange(x0, x1) + 0.5) * self.soft.shape[1] / W - 0.5).astype(np.float32)
        mx = np.broadcast_to(xs[None, :], (y1 - y0, x1 - x0))
        my = np.broadcast_to(ys[:, None], (y1 - y0, x1 - x0))
        return cv2.remap(
            self.soft,
            np.ascontiguousarray(mx),
            np.ascontiguousarray(my),
            interpolation=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )


def crop_trust(prob: np.ndarray, coarse: np.ndarray, cells: int = 16) -> float:
    """How far a crop's prediction may be trusted, in [0, 1]: refinement should change details,
    not the shape. Both maps are area-averaged to `cells` x `cells` and thresholded, which removes
    fine structure (hairs, thin lines) and keeps the gross shape; an IoU of the two shapes of 0.7 or
    more gives full trust, 0.3 or less none. Where neither has much foreground (under 3% of the
    cells) there is no shape to disagree about: full trust."""
    size = (min(cells, prob.shape[1]), min(cells, prob.shape[0]))
    a = cv2.resize(np.asarray(prob, np.float32), size, interpolation=cv2.INTER_AREA) > 0.5
    b = cv2.resize(np.asarray(coarse, np.float32), size, interpolation=cv2.INTER_AREA) > 0.5
    union = np.count_nonzero(a | b)
    if union < 0.03 * a.size:
        return 1.0
    iou = np.count_nonzero(a & b) / union
    return float(_smoothstep(np.asarray((iou - 0.3) / 0.4)))


def refine(
    coarse: np.ndarray,
    predict: Callable[[Sequence[Box]], Sequence[np.ndarray]],
    model_size: int,
    cfg: RefineConfig | None = None,
    plan: CropPlan | None = None,
    inplace: bool = False,
) -> tuple[np.ndarray, CropPlan]:
    """Refine `coarse` (H, W) float probabilities with crop predictions; returns (prob, plan).

    predict(boxes) -> one (y1 - y0, x1 - x0) probability array per box, at the source resolution;
    called with at most cfg.batch boxes at a time. inplace: write into `coarse` (float32) instead
    of a copy.

    Crops are taken row by row; the accumulators hold only the rows that a crop still to come can
    reach (about one crop side), and rows above that are blended into the output as soon as the
    crops move past them.
    """
    cfg = cfg or RefineConfig()
    coarse = np.asarray(coarse, dtype=np.float32)
    plan = plan or plan_crops(coarse, model_size, cfg)
    out = coarse if inplace else coarse.copy()
    if not plan.boxes:
        return out, plan
    feather = BandFeather(coarse, plan, cfg) if cfg.band_only else None
    boxes = sorted(plan.boxes)
    rx0 = min(b[1] for b in boxes)
    rx1 = max(b[3] for b in boxes)
    top = boxes[0][0]  # the first row the accumulators hold
    num = np.zeros((0, rx1 - rx0), np.float32)
    den = np.zeros_like(num)

    def flush(upto: int) -> None:
        """Blend rows [top, upto) into `out` and drop them from the accumulators."""
        nonlocal top, num, den
        for a in range(top, upto, 256):  # strips: the temporaries stay small
            b = min(upto, a + 256)
            n, d = num[a - top : b - top], den[a - top : b - top]
            weight = _smoothstep(d / 0.5)  # full trust once half a crop's weight is there
            if feather is not None:
                weight *= feather((a, rx0, b, rx1))
            view = out[a:b, rx0:rx1]
            view += weight * (n / np.maximum(d, 1e-6) - view)
        num, den = num[upto - top :].copy(), den[upto - top :].copy()
        top = upto

    for i in range(0, len(boxes), max(1, cfg.batch)):
        batch = boxes[i : i + cfg.batch]
        probs = predict(batch)
        bottom = max(b[2] for b in batch)
        if bottom > top + len(num):  # grow the accumulators downwards
            grow = bottom - top - len(num)
            num = np.concatenate([num, np.zeros((grow, rx1 - rx0), np.float32)])
            den = np.concatenate([den, np.zeros((grow, rx1 - rx0), np.float32)])
        for box, prob in zip(batch, probs):
            y0, x0, y1, x1 = box
            if np.shape(prob) != (y1 - y0, x1 - x0):
                raise ValueError(f"crop {box}: predicted {np.shape(prob)}, expected {(y1 - y0, x1 - x0)}")
            w = crop_window(box, coarse.shape)
            if cfg.trust:
                w *= crop_trust(prob, coarse[y0:y1, x0:x1])
            num[y0 - top : y1 - top, x0 - rx0 : x1 - rx0] += w * prob
            den[y0 - top : y1 - top, x0 - rx0 : x1 - rx0] += w
        del probs
        following = boxes[i + cfg.batch][0] if i + cfg.batch < len(boxes) else top + len(num)
        if following > top:
            flush(min(following, top + len(num)))
            top = max(top, following)  # rows in a gap between crop rows: no crop there, nothing to blend
    return out, plan
