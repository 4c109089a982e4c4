"""Open-vocabulary segmentation with CLIP: a CAT-Seg-style cost-volume head.

The head sees CLIP only through a cosine cost volume between dense patch embeddings and class text
embeddings, so it works for any list of class names, including ones never labelled.

Geometry: the image is resized so its shorter side is the model's input size (the scale CLIP was
trained at); a square result is one pass, anything else is covered by overlapping model-size
windows whose logits are averaged (sliding-window inference). Training samples are letterboxed
(longest side -> input size, padding = ignore index).

Background is explicit: "background" is a class (prepended when the user's list lacks it), and an
optional `threshold` turns pixels whose best class probability is below it into background.
Loss: per-class binary cross-entropy on one-hot targets, pixels at the ignore index excluded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from adapt.backbones.clip import dense_image_features, image_normalization, text_embeddings
from adapt.data.augment import letterbox
from adapt.tasks.masks import BACKGROUND, CLASS_MAP, MaskKind

# The paper's template and the one tiny-clip was pretrained with, averaged (a prompt ensemble).
DEFAULT_TEMPLATES = ["a photo of a {} in the scene.", "a photo of a {}."]
IGNORE_INDEX = 255


class _ResConv(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)
        self.norm = nn.GroupNorm(4, ch)

    def forward(self, x):
        return x + F.gelu(self.norm(self.conv(x)))


def class_logits(model, head, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """The open-vocabulary network: CLIP's dense patch features of (B, 3, S, S) normalised images
    against (K, D) class embeddings, through the head -> (B, K, S, S) logits (the task's and its
    ONNX graph's forward)."""
    return head(dense_image_features(model, images), texts, size=images.shape[-2:])


class CostVolumeHead(nn.Module):
    """Cost volume -> per-class spatial aggregation (shared weights, guided by image and text
    features) -> 4x learned upsampling -> one logit map per class.

    A residual on the raw cosine cost, scaled by a learnable temperature, means the untrained head
    already ranks classes as zero-shot CLIP does.
    """

    def __init__(self, embed_dim: int, hidden: int = 32):
        super().__init__()
        self.cost_embed = nn.Conv2d(1, hidden, 7, padding=3)
        self.image_guidance = nn.Conv2d(embed_dim, hidden, 1)
        self.text_guidance = nn.Linear(embed_dim, hidden)
        self.aggregate = nn.Sequential(_ResConv(hidden), _ResConv(hidden))
        self.up = nn.Sequential(
            nn.ConvTranspose2d(hidden, hidden // 2, 2, stride=2),
            nn.GELU(),
            nn.ConvTranspose2d(hidden // 2, hidden // 4, 2, stride=2),
            nn.GELU(),
        )
        self.out = nn.Conv2d(hidden // 4, 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.temperature = nn.Parameter(torch.tensor(10.0))

    def forward(self, patches: torch.Tensor, texts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """patches (B, D, h, w) and texts (K, D), both L2-normalised -> logits (B, K, *size)."""
        b, _, h, w = patches.shape
        k = texts.shape[0]
        cost = torch.einsum("bdhw,kd->bkhw", patches, texts)
        x = self.cost_embed(cost.reshape(b * k, 1, h, w)).reshape(b, k, -1, h, w)
        x = x + self.image_guidance(patches)[:, None] + self.text_guidance(texts)[None, :, :, None, None]
        x = self.aggregate(x.flatten(0, 1))
        refined = self.out(self.up(x)).reshape(b, k, 4 * h, 4 * w)
        logits = F.interpolate(refined, size=size, mode="bilinear", align_corners=False)
        return logits + self.temperature * F.interpolate(cost, size=size, mode="bilinear", align_corners=False)


def head_for(backbone) -> CostVolumeHead:
    """The open-vocabulary head sized for a CLIP backbone."""
    return CostVolumeHead(backbone.spec["embed_dim"], hidden=64 if backbone.spec["embed_dim"] >= 256 else 32)


@dataclass
class Prepared:
    image: torch.Tensor  # (3, S, S) normalised, letterboxed
    labels: torch.Tensor  # (S, S) long class ids, ignore index on padding and unlabelled pixels


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of `window` px covering [0, length), the last one flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


class OpenVocabTask:
    name = "openvocab"
    title = "Open-vocabulary (CLIP: label map of named classes)"
    family = "clip"
    needs = None  # every architecture of the family
    mask: ClassVar[MaskKind] = CLASS_MAP  # a label map of the classes the user names
    default_options: ClassVar[dict] = {}  # the classes come from the dataset (options_from)
    exemplars: ClassVar[bool] = False  # CLIP takes names only

    @classmethod
    def options_from(cls, dataset, **overrides) -> dict:
        """The dataset's class names (id order) and ignore index, and the caller's other options."""
        return {
            "classes": dataset.classes,
            "ignore_index": dataset.ignore_index,
            **{k: v for k, v in overrides.items() if v is not None},
        }

    @staticmethod
    def attach_head(backbone) -> None:
        """Add the cost-volume head, sized for the backbone, on its device (once)."""
        if not backbone.heads:
            device = next(backbone.model.parameters()).device
            backbone.heads.append(head_for(backbone).to(device))

    def __init__(
        self,
        backbone,
        classes: list[str] | None = None,
        templates: list[str] | None = None,
        ignore_index: int = IGNORE_INDEX,
        threshold: float | None = None,
        overlap: float = 1 / 3,
        window_batch: int = 4,
        scale: float = 1.0,
    ):
        if backbone.family != "clip":
            raise ValueError(f"the open-vocabulary task runs on CLIP backbones, not {backbone.name!r}")
        self.attach_head(backbone)
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        self.backbone = backbone
        self.head = backbone.heads[0]
        self.classes = list(classes) if classes else None
        self.templates = list(templates or DEFAULT_TEMPLATES)
        self.ignore_index = ignore_index
        self.threshold = threshold
        self.size = backbone.spec["vision_cfg"]["image_size"]
        self.stride = max(1, round(self.size * (1 - overlap)))
        self.window_batch = window_batch
        self.scale = scale  # working resolution: shorter side = scale x the input size
        self.mean, self.std = image_normalization(backbone)
        self.augment_options = {"mask_fill": ignore_index}  # crops pad labels with "ignore"

    # --- classes and text -----------------------------------------------------------------------
    def vocabulary(self, classes: list[str] | None = None) -> list[str]:
        """The classes predicted: the given list (or the training classes) with background first."""
        classes = [c.strip() for c in (classes or self.classes or []) if c and c.strip()]
        if not classes:
            raise ValueError("name at least one class to segment, e.g. classes=['sky', 'road', 'car']")
        if len(set(classes)) != len(classes):
            raise ValueError(f"class names must be distinct: {classes}")
        return CLASS_MAP.classes(classes)

    def text_features(self, classes: list[str]) -> torch.Tensor:
        return text_embeddings(self.backbone.model, self.backbone.tokenizer, classes, self.templates)

    # --- geometry -------------------------------------------------------------------------------
    def _normalise(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
        return (x - self.mean[:, None, None]) / self.std[:, None, None]

    def prepare(self, image: np.ndarray, mask: np.ndarray | None = None) -> Prepared:
        """Letterbox for training: longest side -> input size, padding labelled ignore."""
        padded, box = letterbox(image, self.size)
        x = self._normalise(padded)
        nh, nw = box.resized_size
        x[:, nh:], x[:, :, nw:] = 0, 0  # padding is zero in the normalised frame
        labels = torch.full((self.size, self.size), self.ignore_index, dtype=torch.long)
        if mask is not None:
            small = letterbox(mask.astype(np.uint8), self.size, nearest=True, value=self.ignore_index)[0]
            labels = torch.from_numpy(small).long()
        return Prepared(x, labels)

    def working_size(self, h: int, w: int) -> tuple[int, int]:
        """(h, w) after resizing the shorter side to `scale` x the model's input size."""
        side = round(self.size * self.scale)
        scale = side / min(h, w)
        return max(self.size, round(h * scale)), max(self.size, round(w * scale))

    def windows(self, h: int, w: int) -> list[tuple[int, int]]:
        """(y, x) offsets of the model-size windows covering an (h, w) working image."""
        return [
            (y, x) for y in window_starts(h, self.size, self.stride) for x in window_starts(w, self.size, self.stride)
        ]

    # --- model calls ----------------------------------------------------------------------------
    def logits(self, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised images, (K, D) class embeddings -> (B, K, S, S) logits."""
        return class_logits(self.backbone.model, self.head, images, texts)

    def loss(self, prepared: list[Prepared], rng: np.random.Generator, device) -> torch.Tensor:
        classes = self.vocabulary()
        images = torch.stack([p.image for p in prepared]).to(device)
        labels = torch.stack([p.labels for p in prepared]).to(device)
        logits = self.logits(images, self.text_features(classes))  # text tower in the graph: H-CLIP adapts it
        return per_class_bce(logits, labels, self.ignore_index)

    @torch.no_grad()
    def class_scores(self, image: np.ndarray, classes: list[str], device="cpu") -> torch.Tensor:
        """Per-class probabilities (K, h, w) at the working resolution (shorter side = input size),
        averaged over overlapping windows."""
        h, w = image.shape[:2]
        wh, ww = self.working_size(h, w)
        resized = cv2.resize(image, (ww, wh), interpolation=cv2.INTER_AREA if wh < h else cv2.INTER_LINEAR)
        x = self._normalise(resized)
        texts = self.text_features(classes)
        total = torch.zeros(len(classes), wh, ww)
        count = torch.zeros(1, wh, ww)
        offsets = self.windows(wh, ww)
        s = self.size
        for i in range(0, len(offsets), self.window_batch):
            batch = offsets[i : i + self.window_batch]
            crops = torch.stack([x[:, y : y + s, x0 : x0 + s] for y, x0 in batch]).to(device)
            probs = torch.sigmoid(self.logits(crops, texts).float()).cpu()
            for (y, x0), p in zip(batch, probs):
                total[:, y : y + s, x0 : x0 + s] += p
                count[:, y : y + s, x0 : x0 + s] += 1
        return total / count

    @torch.no_grad()
    def predict(
        self, image: np.ndarray, classes: list[str] | None = None, device="cpu", threshold: float | None = None
    ) -> tuple[np.ndarray, list[str], np.ndarray]:
        """(labels (H, W) uint8 ids into the returned class list, classes, confidence (H, W) float32),
        at the source resolution. Upsampling is done in row bands so a large photo never needs a
        K x H x W array."""
        classes = self.vocabulary(classes)
        if len(classes) > 255:
            raise ValueError(f"at most 255 classes at once, got {len(classes)}")
        scores = self.class_scores(image, classes, device)
        labels, confidence = self.labels_from_scores(scores, image.shape[:2], threshold)
        return labels, classes, confidence

    def labels_from_scores(
        self, scores: torch.Tensor, shape: tuple[int, int], threshold: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """label_map with this task's threshold unless one is given."""
        return label_map(scores, shape, self.threshold if threshold is None else threshold)

    @torch.no_grad()
    def predict_many(self, images: list[np.ndarray], classes: list[str] | None = None, device="cpu") -> list[tuple]:
        """Auto-labelling: [(outputs, scores)] per image: outputs "index" (class ids, uint8) and
        "main" (the colour map) at each image's resolution; scores from
        adapt.uncertainty.label_uncertainty on the working-resolution class scores. The class list
        is the same for every image (see `vocabulary`)."""
        from adapt.render import colorize
        from adapt.uncertainty import label_uncertainty

        classes = self.vocabulary(classes)
        colors = class_colors(classes)
        results = []
        for image in images:  # class_scores batches each image's windows already
            scores = self.class_scores(image, classes, device)
            labels, _ = self.labels_from_scores(scores, image.shape[:2])
            results.append(({"index": labels, "main": colorize(labels, colors)}, label_uncertainty(scores)))
        return results

    def predict_outputs(
        self, image: np.ndarray, classes: list[str] | None = None, threshold: float | None = None, device="cpu", **_
    ) -> dict:
        """What a user downloads: label_outputs of the predicted label map."""
        labels, classes, _ = self.predict(image, classes, device=device, threshold=threshold)
        return label_outputs(image, labels, classes)

    @torch.no_grad()
    def evaluate(self, samples, device="cpu", classes: list[str] | None = None, dis: bool = True) -> dict:
        """mIoU over the classes (background included), pixel accuracy and per-class IoU, from one
        confusion matrix accumulated over every held-out pixel (not a mean of per-image scores), with
        the bootstrap intervals of mIoU and pixel accuracy over the images under "interval".
        `classes` must list the dataset's classes in id order (default: the training classes)."""
        from adapt.metrics import INTERVAL, ConfusionMatrix, confusion_statistic, intervals_over_images

        classes = list(classes or self.classes or [])
        if not classes:
            raise ValueError("evaluation needs the dataset's class list")
        vocab = self.vocabulary(classes)
        shift = len(vocab) - len(classes)  # 1 when "background" was prepended to the dataset's classes
        cm = ConfusionMatrix(len(vocab), ignore_index=self.ignore_index)
        per_image = []  # each image's confusion matrix: the intervals resample images
        for s in samples:
            pred, _, _ = self.predict(s.image, classes, device=device)
            gt = s.mask.astype(np.int64)
            if shift:
                gt = np.where(gt == self.ignore_index, gt, gt + shift)
            one = ConfusionMatrix(len(vocab), ignore_index=self.ignore_index)
            one.update(pred, gt)
            cm += one
            per_image.append(one.matrix)
        ious = cm.iou_per_class()
        out = {"miou": cm.miou(), "pixel_acc": cm.pixel_accuracy()}
        out.update({f"iou/{c}": float(ious[k]) for k, c in enumerate(vocab) if not np.isnan(ious[k])})
        names = ("miou", "pixel_acc")
        out[INTERVAL] = intervals_over_images({k: per_image for k in names}, {k: confusion_statistic(k) for k in names})
        self.last_confusion = cm
        return out


def label_map(
    scores: torch.Tensor, shape: tuple[int, int], threshold: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(labels (H, W) uint8, confidence (H, W) float32) at the source size `shape` from per-class
    scores (K, h, w) at a working resolution, background first: each pixel's best class (background
    where the best score is below `threshold`), upsampled in row bands (never a K x H x W array)."""
    h, w = shape
    labels = np.zeros((h, w), np.uint8)
    confidence = np.zeros((h, w), np.float32)
    band = max(1, (1 << 22) // max(1, scores.shape[0] * w))
    sy = scores.shape[1] / h
    for y0 in range(0, h, band):
        y1 = min(h, y0 + band)
        # the source rows y0..y1 map to working rows [y0*sy, y1*sy); take them with a margin
        a, b = max(0, int(y0 * sy) - 2), min(scores.shape[1], int(np.ceil(y1 * sy)) + 2)
        part = F.interpolate(scores[None, :, a:b], size=(round((b - a) / sy), w), mode="bilinear", align_corners=False)[
            0
        ]
        off = round(a / sy)
        rows = part[:, y0 - off : y0 - off + (y1 - y0)]
        if rows.shape[1] < y1 - y0:  # rounding at the bottom edge
            rows = F.pad(rows, (0, 0, 0, y1 - y0 - rows.shape[1]), mode="replicate")
        best, idx = rows.max(0)
        if threshold is not None:
            idx = torch.where(best < threshold, torch.zeros_like(idx), idx)
        labels[y0:y1] = idx.numpy().astype(np.uint8)
        confidence[y0:y1] = best.numpy()
    return labels, confidence


def label_outputs(image: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """What a user downloads of a label map: "main" the colour map, "index" the class-id PNG,
    "legend" (with each class's share of the image), "overlay", and "mask_<class>" per class present."""
    from adapt.render import colorize, legend, overlay

    colors = class_colors(classes)
    share = np.bincount(labels.ravel(), minlength=len(classes)) / labels.size
    out = {
        "main": colorize(labels, colors),
        "index": labels,
        "legend": legend(classes, colors, fractions=list(share)),
        "overlay": overlay(image, labels, colors, skip=(0,)),
    }
    for k, name in enumerate(classes):
        if k and share[k] > 0:
            out[f"mask_{_safe(name)}"] = ((labels == k) * 255).astype(np.uint8)
    return out


def class_colors(classes: list[str]) -> np.ndarray:
    """The label map's colours: distinct hues per class, in the colour a class's name says
    (adapt.render.class_palette), background a neutral dark grey."""
    from adapt.render import class_palette

    colors = class_palette(classes)
    for k, name in enumerate(classes):
        if name == BACKGROUND:
            colors[k] = (48, 48, 48)
    return colors


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name.strip())[:40] or "class"


def per_class_bce(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX, balanced: bool = True
) -> torch.Tensor:
    """Binary cross-entropy of every class's logit map against its one-hot target, over the pixels
    whose label is not `ignore_index` (B, K, H, W logits; B, H, W labels).

    balanced: each class's loss is the mean of its positive-pixel and negative-pixel terms (only the
    negative term when it is absent from the batch), then averaged over classes. Plain BCE lets
    the background, ~90% of the pixels in a scene of small objects, win every argmax: the head
    learns to say "no object" everywhere (measured: seen-class mIoU fell from 0.15 to 0.10 while
    fitting the training images). balanced=False is the plain mean over pixels and classes."""
    k = logits.shape[1]
    valid = labels != ignore_index
    if labels[valid].numel() and int(labels[valid].max()) >= k:
        raise ValueError(f"a label id {int(labels[valid].max())} is outside the {k} classes")
    target = F.one_hot(torch.where(valid, labels, 0), k).permute(0, 3, 1, 2).float()
    bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    weight = valid[:, None].float().expand_as(bce)
    if not balanced:
        return (bce * weight).sum() / weight.sum().clamp_min(1)
    pos, neg = target * weight, (1 - target) * weight
    pos_n, neg_n = pos.sum(dim=(0, 2, 3)), neg.sum(dim=(0, 2, 3))
    pos_term = (bce * pos).sum(dim=(0, 2, 3)) / pos_n.clamp_min(1)
    neg_term = (bce * neg).sum(dim=(0, 2, 3)) / neg_n.clamp_min(1)
    per_class = torch.where(pos_n > 0, 0.5 * (pos_term + neg_term), neg_term)
    return per_class[(pos_n + neg_n) > 0].sum() / max(1, int(((pos_n + neg_n) > 0).sum()))
