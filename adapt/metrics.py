"""Segmentation metrics: binary IoU/Dice, the DIS metric set, boundary F-score, and mIoU.

Conventions
-----------
* Binary masks are numpy (or torch) arrays of bool, 0/1, or 0/255 (PNG masks); anything else
  raises, because a probability map passed by mistake would otherwise be silently thresholded at 0.
* :func:`iou` and :func:`dice` are 1.0 when prediction and ground truth are both empty.
* :class:`DISMetrics` follows the dichotomous-image-segmentation protocol (DIS5K: maxF, wF, S, mean E,
  MAE, HCE) through pysodmetrics, plus a boundary F-score. pysodmetrics is written for saved
  saliency PNGs: it expects the prediction as uint8 0..255 and the ground truth as uint8 0/255,
  binarised as ``gt > 128`` (strictly greater than 128). A 0/1 ground truth passed straight in is
  therefore *all background*, and every metric comes out wrong without an error. The adapter takes
  probabilities in [0, 1] and bool/0-1/0-255 masks and does the conversion once, here.
* pysodmetrics also min-max stretches each prediction to [0, 1] (MATLAB's ``mapminmax``) before
  computing anything, as the published DIS/SOD evaluation code does; ``minmax=True`` (default) keeps
  that protocol so numbers compare with papers, ``minmax=False`` scores the probabilities as they are.
* :class:`ConfusionMatrix` accumulates over a whole set (dataset-level IoU, not a mean of per-image
  IoUs); a class absent from both prediction and ground truth over the set has IoU NaN and is left
  out of the mean.
"""

from __future__ import annotations

import numpy as np

# ----------------------------------------------------------------------------------------------
# input conversion


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, on any device
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def as_mask(x, name: str = "mask") -> np.ndarray:
    """A bool mask from bool, 0/1 or 0/255 values; raises ValueError for anything else."""
    x = _to_numpy(x)
    if x.dtype == bool:
        return x
    if x.size == 0:
        return x.astype(bool)
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name} must be numeric or bool, got dtype {x.dtype}")
    values = np.unique(x)
    if np.isin(values, (0, 1)).all() or np.isin(values, (0, 255)).all():
        return x != 0
    shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if values.size > 6 else "")
    raise ValueError(
        f"{name} must be a binary mask (bool, 0/1 or 0/255), got values {shown}; "
        "threshold probabilities first (e.g. prob > 0.5)"
    )


def as_prob(x, name: str = "prediction") -> np.ndarray:
    """A float64 probability map from floats in [0, 1], bool, or integers 0/1."""
    x = _to_numpy(x)
    if x.dtype == bool:
        return x.astype(np.float64)
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name} must be numeric or bool, got dtype {x.dtype}")
    x = x.astype(np.float64)
    if x.size and (not np.isfinite(x).all() or x.min() < -1e-5 or x.max() > 1 + 1e-5):
        raise ValueError(
            f"{name} must hold probabilities in [0, 1] (got range {np.nanmin(x):g}..{np.nanmax(x):g}); "
            "apply a sigmoid to logits, divide 0..255 maps by 255"
        )
    return np.clip(x, 0.0, 1.0)  # float rounding (e.g. after interpolation) may step an ulp outside


def _pair(pred, gt, pred_is_prob: bool = False) -> tuple[np.ndarray, np.ndarray]:
    p = as_prob(pred) if pred_is_prob else as_mask(pred, "prediction")
    g = as_mask(gt, "ground truth")
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} != ground truth shape {g.shape}")
    return p, g


# ----------------------------------------------------------------------------------------------
# binary IoU / Dice


def iou(pred, gt) -> float:
    """|P ∩ G| / |P ∪ G| for binary masks; 1.0 when both are empty."""
    p, g = _pair(pred, gt)
    union = np.count_nonzero(p | g)
    return 1.0 if union == 0 else np.count_nonzero(p & g) / union


def dice(pred, gt) -> float:
    """2|P ∩ G| / (|P| + |G|) for binary masks; 1.0 when both are empty."""
    p, g = _pair(pred, gt)
    total = np.count_nonzero(p) + np.count_nonzero(g)
    return 1.0 if total == 0 else 2 * np.count_nonzero(p & g) / total


def _batch_counts(pred, gt):
    p, g = _pair(pred, gt)
    if p.ndim < 1:
        raise ValueError("batched metrics need a leading batch axis")
    n = p.shape[0]
    p, g = p.reshape(n, -1), g.reshape(n, -1)
    inter = np.count_nonzero(p & g, axis=1)
    return inter, np.count_nonzero(p, axis=1), np.count_nonzero(g, axis=1)


def iou_batch(pred, gt) -> np.ndarray:
    """Per-item IoU over the leading axis of (N, ...) masks, shape (N,); 1.0 for empty/empty items."""
    inter, sp, sg = _batch_counts(pred, gt)
    union = sp + sg - inter
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def dice_batch(pred, gt) -> np.ndarray:
    """Per-item Dice over the leading axis of (N, ...) masks, shape (N,); 1.0 for empty/empty items."""
    inter, sp, sg = _batch_counts(pred, gt)
    total = sp + sg
    return np.where(total == 0, 1.0, 2 * inter / np.maximum(total, 1))


# ----------------------------------------------------------------------------------------------
# boundary F-score


def mask_boundary(mask: np.ndarray) -> np.ndarray:
    """The 1-pixel inner boundary of a bool mask: pixels of the mask with a background 8-neighbour.

    The image frame is not a boundary (an object cut by the frame has no edge there).
    """
    import cv2

    m = mask.astype(np.uint8)
    # pad with 1: outside the frame counts as object, so the frame itself is never a boundary
    eroded = cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=1)
    return mask & ~eroded.astype(bool)


def _distance_to(boundary: np.ndarray) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest True pixel of ``boundary``."""
    import cv2

    src = np.where(boundary, 0, 1).astype(np.uint8)
    return cv2.distanceTransform(src, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def boundary_scores(pred, gt, tolerance: float = 2.0) -> tuple[float, float, float]:
    """(precision, recall, F) of the predicted boundary against the ground-truth boundary.

    A predicted boundary pixel is correct if a ground-truth boundary pixel lies within
    ``tolerance`` pixels (Euclidean), and vice versa for recall. Both boundaries empty -> 1, 1, 1;
    one empty -> 0 for the undefined side and F = 0.
    """
    p, g = _pair(pred, gt)
    if p.ndim != 2:
        raise ValueError(f"boundary scores need 2-D masks, got shape {p.shape}")
    bp, bg = mask_boundary(p), mask_boundary(g)
    n_p, n_g = np.count_nonzero(bp), np.count_nonzero(bg)
    if n_p == 0 and n_g == 0:
        return 1.0, 1.0, 1.0
    if n_p == 0 or n_g == 0:
        return (0.0 if n_p else 1.0), (0.0 if n_g else 1.0), 0.0
    precision = np.count_nonzero(_distance_to(bg)[bp] <= tolerance) / n_p
    recall = np.count_nonzero(_distance_to(bp)[bg] <= tolerance) / n_g
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return float(precision), float(recall), float(f)


def boundary_f(pred, gt, tolerance: float = 2.0) -> float:
    """Boundary F-score of binary masks within ``tolerance`` pixels (see :func:`boundary_scores`)."""
    return boundary_scores(pred, gt, tolerance)[2]


# ----------------------------------------------------------------------------------------------
# DIS metric set


def _squeeze2d(x: np.ndarray, name: str) -> np.ndarray:
    while x.ndim > 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2:
        raise ValueError(f"{name} must be a single 2-D map, got shape {x.shape}")
    return x


class DISMetrics:
    """Dataset-level DIS metrics from per-image probability maps and binary ground truths.

    ``step(prob, gt)``: ``prob`` float array in [0, 1] (H, W), ``gt`` bool / 0-1 / 0-255 mask.
    ``results()``: mean over images of

    * ``maxF``: max over 256 thresholds of the mean F-measure curve (β² = 0.3), ``meanF`` its mean;
    * ``wFm``: weighted F-measure (Margolin et al.); pysodmetrics scores 0 for an empty ground truth;
    * ``Sm``: S-measure (α = 0.5);  ``meanEm`` / ``maxEm``: mean / max of the E-measure curve;
    * ``MAE``: mean absolute error;
    * ``HCE``: human correction effort (Qin et al., DIS; relax 5, ε 2; lower is better; it counts
      pixels-level edit points, so it depends on image size). Skipped with ``hce=False`` (it is the
      slowest metric);
    * ``boundaryF``: boundary F-score of ``prob > threshold`` within ``tolerance`` pixels;
    * ``n``: number of images.

    The maps are handed to pysodmetrics as uint8 (``round(prob * 255)``, ``gt * 255``) exactly like
    saved PNGs, so the standard protocol (including its per-image min-max stretch) applies; with
    ``minmax=False`` the probabilities are passed unnormalised instead.
    """

    def __init__(self, hce: bool = True, tolerance: float = 2.0, threshold: float = 0.5, minmax: bool = True):
        import py_sod_metrics as sod

        self.hce, self.tolerance, self.threshold, self.minmax = hce, tolerance, threshold, minmax
        self._fm = sod.FmeasureV2(
            metric_handlers={"fm": sod.FmeasureHandler(with_dynamic=True, with_adaptive=False, beta=0.3)}
        )
        self._wfm = sod.WeightedFmeasure()
        self._sm = sod.Smeasure()
        self._em = sod.Emeasure()
        self._mae = sod.MAE()
        self._hce = sod.HumanCorrectionEffortMeasure(relax=5, epsilon=2.0) if hce else None
        self._boundary: list[float] = []

    def step(self, prob, gt) -> None:
        p = _squeeze2d(as_prob(prob), "prediction")
        g = _squeeze2d(as_mask(gt, "ground truth"), "ground truth")
        if p.shape != g.shape:
            raise ValueError(f"prediction shape {p.shape} != ground truth shape {g.shape}")
        if self.minmax:
            # what an evaluation script reading PNGs gets; pysodmetrics then does /255, min-max
            # stretch, and gt > 128
            pred_in, gt_in, normalize = np.round(p * 255).astype(np.uint8), g.astype(np.uint8) * 255, True
        else:
            pred_in, gt_in, normalize = p, g, False
        for metric in (self._fm, self._wfm, self._sm, self._em, self._mae, self._hce):
            if metric is not None:
                metric.step(pred_in, gt_in, normalize=normalize)
        self._boundary.append(boundary_f(p > self.threshold, g, self.tolerance))

    def __len__(self) -> int:
        return len(self._boundary)

    def results(self) -> dict:
        if not self._boundary:
            raise ValueError("no images: call step() before results()")
        fm_curve = self._fm.get_results()["fm"]["dynamic"]
        em_curve = self._em.get_results()["em"]["curve"]
        out = {
            "maxF": float(np.max(fm_curve)),
            "meanF": float(np.mean(fm_curve)),
            "wFm": float(self._wfm.get_results()["wfm"]),
            "Sm": float(self._sm.get_results()["sm"]),
            "meanEm": float(np.mean(em_curve)),
            "maxEm": float(np.max(em_curve)),
            "MAE": float(self._mae.get_results()["mae"]),
            "boundaryF": float(np.mean(self._boundary)),
            "n": len(self._boundary),
        }
        if self._hce is not None:
            out["HCE"] = float(self._hce.get_results()["hce"])
        return out


# ----------------------------------------------------------------------------------------------
# mIoU over label maps


class ConfusionMatrix:
    """Pixel confusion matrix over a whole evaluation set, for (m)IoU of label maps.

    ``update(pred, gt)`` takes integer label maps of the same shape (any shape, e.g. (H, W) or
    (N, H, W)); pixels whose ground truth is ``ignore_index`` are skipped. Other labels must lie in
    ``[0, num_classes)``. ``matrix[g, p]`` counts pixels of true class g predicted as p.

    ``iou_per_class()``: TP / (TP + FP + FN) per class over everything seen; NaN for a class that
    is absent from both prediction and ground truth (0 / 0), and such classes are excluded from
    ``miou``. A class predicted but never in the ground truth gets IoU 0 and counts.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255):
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.num_classes, self.ignore_index = int(num_classes), ignore_index
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def reset(self) -> None:
        self.matrix[:] = 0

    def update(self, pred, gt) -> None:
        p, g = _to_numpy(pred), _to_numpy(gt)
        if p.shape != g.shape:
            raise ValueError(f"prediction shape {p.shape} != ground truth shape {g.shape}")
        for arr, what in ((p, "prediction"), (g, "ground truth")):
            if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
                raise ValueError(f"{what} must be an integer label map, got dtype {arr.dtype}")
        p, g = p.reshape(-1).astype(np.int64), g.reshape(-1).astype(np.int64)
        if self.ignore_index is not None:
            keep = g != self.ignore_index
            p, g = p[keep], g[keep]
        k = self.num_classes
        for arr, what in ((g, "ground truth"), (p, "prediction")):
            if arr.size and (arr.min() < 0 or arr.max() >= k):
                bad = arr[(arr < 0) | (arr >= k)][0]
                raise ValueError(
                    f"{what} label {bad} outside [0, {k})"
                    + (f" (ignore_index is {self.ignore_index})" if what == "ground truth" else "")
                )
        self.matrix += np.bincount(g * k + p, minlength=k * k).reshape(k, k)

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        if other.num_classes != self.num_classes:
            raise ValueError("cannot add confusion matrices with different numbers of classes")
        self.matrix += other.matrix
        return self

    def iou_per_class(self) -> np.ndarray:
        tp = np.diag(self.matrix).astype(np.float64)
        denom = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, tp / np.where(denom > 0, denom, 1), np.nan)

    def miou(self, classes=None) -> float:
        """Mean IoU over ``classes`` (all by default), ignoring NaN (absent) classes; NaN if none."""
        ious = self.iou_per_class()
        if classes is not None:
            idx = np.asarray(list(classes), dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= self.num_classes):
                raise ValueError(f"class indices must lie in [0, {self.num_classes})")
            ious = ious[idx]
        valid = ious[~np.isnan(ious)]
        return float(valid.mean()) if valid.size else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")


def harmonic_iou(seen_miou: float, unseen_miou: float) -> float:
    """hIoU = 2·seen·unseen / (seen + unseen), the usual summary for seen/unseen class splits."""
    if np.isnan(seen_miou) or np.isnan(unseen_miou):
        return float("nan")
    s = seen_miou + unseen_miou
    return 0.0 if s == 0 else 2 * seen_miou * unseen_miou / s


__all__ = [
    "as_mask",
    "as_prob",
    "iou",
    "dice",
    "iou_batch",
    "dice_batch",
    "mask_boundary",
    "boundary_scores",
    "boundary_f",
    "DISMetrics",
    "ConfusionMatrix",
    "harmonic_iou",
]


MAIN_METRICS = ("iou", "miou")  # what "better" means: the dichotomous task's, the open-vocabulary task's


def main_score(metrics: dict) -> float:
    return float(next(metrics[k] for k in MAIN_METRICS if k in metrics))


def not_better_warning(
    frozen: dict | None, adapted: dict | None, lr: float | None = None, steps: int | None = None, method: str = ""
) -> str | None:
    """A plain sentence when the adapted model does not beat the frozen one on the held-out split,
    with what to try; None when it does (or there is nothing to compare)."""
    if not frozen or not adapted or not any(k in frozen and k in adapted for k in MAIN_METRICS):
        return None
    name = next(k for k in MAIN_METRICS if k in frozen and k in adapted)
    f, a = float(frozen[name]), float(adapted[name])
    if a > f:
        return None
    tips = [
        "a lower learning rate" + (f" (this run: {lr:g})" if lr else ""),
        "fewer steps" + (f" (this run: {steps})" if steps else ""),
    ]
    if method != "decoder":
        tips.append("the decoder-only method")
    tips.append("more labelled images")
    return (
        f"The adapted model is not better than the frozen one on the held-out images "
        f"({name} {a:.3f} adapted, {f:.3f} frozen). Try {', '.join(tips[:-1])} or {tips[-1]}."
    )


# ----------------------------------------------------------------------------------------------
# intervals over seeds (the benchmarks' and the Train tab's comparisons)

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond: the normal's 1.96)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131)
_T975 += (2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def mean_interval(values) -> tuple[float, float]:
    """(mean, half-width of its 95% Student's t interval) of per-seed values; the half-width is nan
    for a single value."""
    v = np.asarray(list(values), float)
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) < 2:
        return float(v.mean()), float("nan")
    t = _T975[len(v) - 2] if len(v) - 1 <= len(_T975) else 1.96
    return float(v.mean()), float(t * v.std(ddof=1) / np.sqrt(len(v)))


def paired_difference(a: dict, b: dict) -> tuple[float, float, int]:
    """Paired comparison of two methods run on the same seeds ({seed: score}): (mean of a - b, the
    half-width of its 95% interval, number of seeds paired). The difference is significant at 5%
    when |mean| > half-width."""
    seeds = sorted(set(a) & set(b))
    mean, half = mean_interval([a[s] - b[s] for s in seeds])
    return mean, half, len(seeds)


def format_interval(mean: float, half: float, signed: bool = False) -> str:
    """'0.412 [0.380, 0.444]' (or '+0.012 [-0.004, +0.028] *' when signed, * where 0 is outside)."""
    f = "{:+.3f}" if signed else "{:.3f}"
    if np.isnan(half):
        return f.format(mean)
    text = f"{f.format(mean)} [{f.format(mean - half)}, {f.format(mean + half)}]"
    return text + (" *" if signed and abs(mean) > half else "")


# ----------------------------------------------------------------------------------------------
# intervals over images (a run's held-out scores)

# Held-out images below which a run's scores are flagged: a 10-image photo run reported Dice
# 0.34 -> 0.54 on its 2 held-out images while 20 other photos of the same kind went 0.47 -> 0.42
MIN_TRUSTED_HELDOUT = 5
INTERVAL = "interval"  # the key of a score dict's {metric: [low, high]} (not a metric itself)

# what each metric a user sees means, in one line (the page and the CLI show these beside scores)
METRIC_HELP = {
    "iou": "IoU: overlap of predicted and true mask over their union (0 to 1, higher is better)",
    "dice": "Dice: twice the overlap over the two masks' total size (0 to 1, higher is better; above IoU)",
    "miou": "mIoU: IoU of each class's pixels, averaged over the classes (0 to 1, higher is better)",
    "pixel_acc": "pixel accuracy: share of pixels given the right class (high even when small classes are missed)",
    "maxF": "max F-measure: best precision/recall balance over thresholds (higher is better)",
    "meanF": "mean F-measure: the F-measure averaged over thresholds (higher is better)",
    "wFm": "weighted F-measure: F-measure weighting errors near the object more (higher is better)",
    "Sm": "S-measure: structural similarity of prediction and truth (higher is better)",
    "meanEm": "mean E-measure: agreement of pixels and image-level statistics (higher is better)",
    "maxEm": "max E-measure: the E-measure at its best threshold (higher is better)",
    "MAE": "MAE: mean absolute difference of predicted probability and truth (lower is better)",
    "boundaryF": "boundary F: how well the predicted outline matches the true one, within 2 px (higher is better)",
    "HCE": "HCE: human corrections needed to fix the mask (lower is better)",
    "absent_fp": "absent-class false positives: share of prompts for classes not in an image that still find "
    "an instance (0 to 1, lower is better; did it forget how to say no?)",
    "absent_score": "absent-class best score: the highest instance score a prompt for an absent class gets, "
    "below the 0.5 that counts as found too (0 to 1, lower is better)",
    "present_iou": "trained-class IoU: overlap of a present class's found instances with its pixels (higher is better)",
}

# "did it forget?": a rise of the absent-class false-positive rate above this is flagged
FORGETTING_POINTS = 0.02


def forgetting_report(frozen: dict | None, adapted: dict | None) -> str | None:
    """The "did it forget?" line of a concept-segmentation run (adapt.tasks.concept): absent-class
    false positives and trained-class IoU, frozen -> adapted, with their intervals; None for
    tasks that do not score them."""
    if not all("absent_fp" in (m or {}) for m in (frozen, adapted)):
        return None
    names = (
        ("absent_fp", "absent-class false positives"),
        ("absent_score", "absent-class best score"),
        ("present_iou", "trained-class IoU"),
    )
    parts = [
        f"{name} {with_interval(frozen, key)} frozen -> {with_interval(adapted, key)} adapted"
        for key, name in names
        if key in frozen and key in adapted
    ]
    return "; ".join(parts) + " (95% bootstrap intervals over the held-out images)"


def forgetting_warning(frozen: dict | None, adapted: dict | None) -> str | None:
    """A plain sentence when adaptation raised the absent-class false positives by more than
    FORGETTING_POINTS; None otherwise (or when the run does not score them)."""
    f, a = ((m or {}).get("absent_fp") for m in (frozen, adapted))
    if not isinstance(f, float) or not isinstance(a, float) or np.isnan(f) or np.isnan(a):
        return None
    if a - f <= FORGETTING_POINTS + 1e-9:  # exactly 2 points is not "more than"
        return None
    return (
        f"It forgot how to say no: prompts for classes absent from the held-out images now find an instance "
        f"{a:.0%} of the time, {f:.0%} before adaptation (+{100 * (a - f):.1f} points). Train with hard negatives "
        f"(on by default), fewer steps or a lower learning rate."
    )


def bootstrap_interval(per_image, statistic=None, resamples: int = 1000, level: float = 0.95, seed: int = 0):
    """(low, high): the percentile bootstrap interval of `statistic` over images. `per_image` has one
    entry per image along its first axis (a score, or e.g. a confusion matrix); `statistic` maps
    a resampled stack to a number (default: the mean). Resamples whose statistic is NaN are left
    out. (nan, nan) for fewer than 2 images: one image says nothing about the spread."""
    values = np.asarray(per_image, dtype=np.float64)
    if len(values) < 2:
        return float("nan"), float("nan")
    statistic = statistic or (lambda stack: float(stack.mean()))
    draws = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))
    stats = np.asarray([statistic(values[idx]) for idx in draws])
    stats = stats[~np.isnan(stats)]
    if not len(stats):
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    return float(np.percentile(stats, tail)), float(np.percentile(stats, 100 - tail))


def confusion_statistic(metric: str):
    """The bootstrap statistic of a stack of per-image confusion matrices: `metric` ("miou" or
    "pixel_acc") of their sum, as ConfusionMatrix computes it over a whole set."""

    def statistic(stack: np.ndarray) -> float:
        cm = ConfusionMatrix(stack.shape[-1], ignore_index=None)
        cm.matrix = stack.sum(axis=0).astype(np.int64)
        return cm.miou() if metric == "miou" else cm.pixel_accuracy()

    return statistic


def small_split_warning(heldout: int) -> str | None:
    """The sentence that flags a held-out split too small to trust; None from MIN_TRUSTED_HELDOUT up."""
    if heldout >= MIN_TRUSTED_HELDOUT:
        return None
    return (
        f"only {heldout} held-out image(s): too few to trust these scores (a gain can reverse on other "
        f"images of the same kind); label at least {MIN_TRUSTED_HELDOUT} images to hold out"
    )


def with_interval(metrics: dict | None, key: str) -> str:
    """'0.412 [0.380, 0.444]': a score with its interval over images when the scores carry one."""
    value = (metrics or {}).get(key)
    if not isinstance(value, (int, float)):
        return ""
    low, high = ((metrics or {}).get(INTERVAL) or {}).get(key, (float("nan"),) * 2)
    if low is None or np.isnan(low):
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def intervals_over_images(per_image: dict, statistics: dict | None = None) -> dict:
    """{metric: [low, high]} (bootstrap_interval) for each metric's per-image values; `statistics`
    gives a metric's own statistic (default: the mean). A metric without an interval (under 2
    images) is left out, so the result is plain JSON."""
    out = {}
    for name, values in per_image.items():
        low, high = bootstrap_interval(values, (statistics or {}).get(name))
        if not np.isnan(low):
            out[name] = [low, high]
    return out
