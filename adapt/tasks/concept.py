"""Concept segmentation with SAM 3: a phrase per class finds every instance of it, and a label map
comes from the classes competing on one scale.

Training data is what users have, with no conversion by hand: class-index maps (classes.json or
COCO categories: each class's name is its phrase) or binary masks with one phrase for the object
(`phrase`); instances are the connected components of each class, their boxes the components'
extents. A training pair is (image, phrase):
- a class present in the image: SAM 3's own recipe (sam3.train.loss, the values of its configs),
  written out here because Meta's criterion needs its collated targets and a matcher built into
  the model: queries matched one-to-one to the instances (Hungarian, costs 2 score, 5 box L1,
  2 GIoU); matched queries learn a soft score target prob^0.25 x IoU^0.75 (weight 10), the others
  0; boxes L1 (5) and GIoU (2), masks focal (200) and Dice (10) at the mask head's resolution;
  the presence token learns 1 (weight 20).
- a hard negative (`hard_negatives`, on by default): a class absent from the image, drawn from the
  other classes, whose only target is presence 0 (no query loss, as SAM 3 trains non-present
  phrases). Without them the presence token only ever hears "present" and the adapted model
  stops saying no: the forgetting the "did it forget?" scores measure.

Prediction: an instance's pixel score is its score (query x presence) times its mask probability;
a class's score map is the best of its instances'; the label map is the best class where that
reaches `threshold` (0.25: e.g. a 0.5 instance over a 0.5 mask), background elsewhere.

Evaluation: mIoU and pixel accuracy of the label map (one confusion matrix over the held-out
pixels), and "did it forget?": `absent_fp`, the share of prompts for classes absent from an image
that find an instance above 0.5 (lower is better), and `present_iou`, the IoU of a present
class's instances (union) with its pixels, each with a bootstrap interval over images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from adapt.tasks.masks import BACKGROUND, CLASS_MAP, MaskKind

IGNORE_INDEX = 255
INSTANCE_THRESHOLD = 0.5  # an instance is found when its score (query x presence) exceeds this
MIN_INSTANCE_AREA = 4  # connected components smaller than this (px at the input size) are noise
# stand-ins for absent classes when the dataset names one class only (scored and trained against)
EVERYDAY_PHRASES = ("person", "car", "dog", "tree", "building", "chair", "bottle", "bird")
# SAM 3's matcher costs and loss weights (its image training configs)
COST = {"score": 2.0, "box": 5.0, "giou": 2.0}
WEIGHT = {"score": 20.0, "positive": 10.0, "presence": 20.0, "box": 5.0, "giou": 2.0, "focal": 200.0, "dice": 10.0}
SOFT_ALPHA = 0.25  # matched queries' score target prob^alpha x IoU^(1 - alpha)


@dataclass
class Prepared:
    image: torch.Tensor  # (3, S, S) normalised, the square input
    labels: torch.Tensor  # (S, S) class ids, IGNORE_INDEX where unlabelled
    instances: dict  # class id -> (N, S, S) bool masks of its connected components


def instances_of(labels: np.ndarray, ignore_index: int = IGNORE_INDEX, min_area: int = MIN_INSTANCE_AREA) -> dict:
    """{class id: (N, H, W) bool}: each labelled class's connected components (8-connected) of at
    least `min_area` pixels; background (0) and the ignore index are not classes."""
    out = {}
    for c in np.unique(labels):
        if c == 0 or c == ignore_index:
            continue
        n, comp, stats, _ = cv2.connectedComponentsWithStats((labels == c).astype(np.uint8), connectivity=8)
        keep = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_area]
        if keep:
            out[int(c)] = np.stack([comp == i for i in keep])
    return out


def boxes_of(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) normalised cxcywh of each mask's extent (pixel edges)."""
    h, w = masks.shape[-2:]
    rows, cols = masks.any(-1), masks.any(-2)
    idx_r, idx_c = torch.arange(h, device=masks.device), torch.arange(w, device=masks.device)
    y0 = torch.where(rows, idx_r, h).min(-1).values
    y1 = torch.where(rows, idx_r, -1).max(-1).values + 1
    x0 = torch.where(cols, idx_c, w).min(-1).values
    x1 = torch.where(cols, idx_c, -1).max(-1).values + 1
    xyxy = torch.stack([x0, y0, x1, y1], -1).float() / masks.new_tensor([w, h, w, h], dtype=torch.float)
    return torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], -1)


def _xyxy(cxcywh: torch.Tensor) -> torch.Tensor:
    c, s = cxcywh[..., :2], cxcywh[..., 2:]
    return torch.cat([c - s / 2, c + s / 2], -1)


def match(logits: torch.Tensor, boxes: torch.Tensor, targets: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching of Q queries to G target boxes (cxcywh) with SAM 3's costs: (query
    indices, target indices)."""
    from scipy.optimize import linear_sum_assignment
    from torchvision.ops import generalized_box_iou

    with torch.no_grad():
        cost = (
            -COST["score"] * logits.float().sigmoid()[:, None]
            + COST["box"] * torch.cdist(boxes.float(), targets.float(), p=1)
            - COST["giou"] * generalized_box_iou(_xyxy(boxes.float()), _xyxy(targets.float()))
        )
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return rows, cols


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    p, t = logits.sigmoid().flatten(1), targets.flatten(1)
    return (1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)).mean()


def present_loss(out: dict, k: int, instances: torch.Tensor) -> torch.Tensor:
    """SAM 3's loss for pair k of `out` (Backbone.ground) whose phrase has `instances` (G, S, S)."""
    from torchvision.ops import box_iou, generalized_box_iou, sigmoid_focal_loss

    logits, boxes, masks = out["pred_logits"][k], out["pred_boxes"][k], out["pred_masks"][k]
    targets = boxes_of(instances)
    rows, cols = match(logits, boxes, targets)
    rows, cols = torch.as_tensor(rows, device=logits.device), torch.as_tensor(cols, device=logits.device)
    mb, tb = boxes[rows].float(), targets[cols]
    with torch.no_grad():
        iou = box_iou(_xyxy(mb), _xyxy(tb)).diagonal()
        target = torch.zeros_like(logits, dtype=torch.float)
        target[rows] = (logits[rows].float().sigmoid() ** SOFT_ALPHA * iou ** (1 - SOFT_ALPHA)).clamp_min(0.01)
    matched = torch.zeros_like(target, dtype=torch.bool)
    matched[rows] = True
    bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    score = torch.where(matched, WEIGHT["positive"] * bce, bce).mean()
    box = F.l1_loss(mb, tb, reduction="sum") / len(rows)
    giou = (1 - generalized_box_iou(_xyxy(mb), _xyxy(tb)).diagonal()).mean()
    m = masks.shape[-1]
    small = F.interpolate(instances[cols][:, None].float(), (m, m), mode="area")[:, 0]
    focal = sigmoid_focal_loss(masks[rows].float(), small, reduction="mean")
    presence = F.binary_cross_entropy_with_logits(out["presence"][k].float(), torch.ones((), device=logits.device))
    return (
        WEIGHT["score"] * score
        + WEIGHT["box"] * box
        + WEIGHT["giou"] * giou
        + WEIGHT["focal"] * focal
        + WEIGHT["dice"] * dice_loss(masks[rows], small)
        + WEIGHT["presence"] * presence
    )


def absent_loss(out: dict, k: int) -> torch.Tensor:
    """A hard negative: the phrase is absent, the presence token learns 0 (no query targets)."""
    logit = out["presence"][k].float()
    return WEIGHT["presence"] * F.binary_cross_entropy_with_logits(logit, torch.zeros_like(logit))


class ConceptTask:
    name = "concept"
    title = "Concept (SAM 3: every instance of each named class)"
    family = "sam"
    needs = "concepts"  # a backbone that segments text phrases: SAM 3
    mask: ClassVar[MaskKind] = CLASS_MAP  # a label map of the named classes
    default_options: ClassVar[dict] = {"hard_negatives": True, "phrase": None}
    exemplars: ClassVar[bool] = True  # boxes of examples join the phrases (Sam3Processor's geometric prompts)

    @classmethod
    def options_from(cls, dataset, phrase: str | None = None, **overrides) -> dict:
        """The classes (each name is its phrase): a class map's names, or for binary masks
        ["background", phrase]; the dataset's ignore index; the caller's other options."""
        classes = list(dataset.classes)
        if dataset.task == "dichotomous":
            if not (phrase and phrase.strip()):
                raise ValueError(
                    "these masks name no class: give the phrase SAM 3 should learn for the object "
                    "(e.g. --phrase 'cell'), or a class map with classes.json"
                )
            classes = [BACKGROUND, phrase.strip()]
        return {
            "classes": classes,
            "ignore_index": dataset.ignore_index if dataset.ignore_index is not None else IGNORE_INDEX,
            **{k: v for k, v in overrides.items() if v is not None},
        }

    @staticmethod
    def attach_head(backbone) -> None:
        """Switch a SAM 3 model to its concept path (its detector's heads train)."""
        if not backbone.concepts:
            raise ValueError(f"the concept task runs on SAM 3 backbones (sam3, tiny-sam3), not {backbone.name!r}")
        if backbone.path != "concept":
            backbone.use_concept_path()

    def __init__(
        self,
        backbone,
        classes: list[str] | None = None,
        ignore_index: int = IGNORE_INDEX,
        hard_negatives: bool = True,
        negatives: int = 2,
        threshold: float = 0.25,
        phrase: str | None = None,
    ):
        self.attach_head(backbone)
        self.backbone = backbone
        self.classes = list(classes) if classes else ([BACKGROUND, phrase] if phrase else None)
        self.ignore_index = ignore_index
        self.hard_negatives = bool(hard_negatives)
        self.negatives = int(negatives)
        self.threshold = float(threshold)
        self.size = backbone.input_size
        self.augment_options = {"mask_fill": ignore_index}

    # --- classes ----------------------------------------------------------------------------------
    def vocabulary(self, classes: list[str] | None = None) -> list[str]:
        """The classes predicted, background first (label ids of predict, predict_many, the batch
        writer's classes.json; a dataset that lists background elsewhere is mapped in evaluate)."""
        classes = [c.strip() for c in (classes or self.classes or []) if c and c.strip()]
        if not [c for c in classes if c != BACKGROUND]:
            raise ValueError("name at least one class (a phrase) to segment, e.g. classes=['cell', 'debris']")
        if len(set(classes)) != len(classes):
            raise ValueError(f"class names must be distinct: {classes}")
        if len(classes) > 255:
            raise ValueError(f"at most 255 classes at once, got {len(classes)}")
        return [BACKGROUND, *(c for c in classes if c != BACKGROUND)]

    def absent_pool(self, vocab: list[str]) -> list[str]:
        """Phrases that stand for absent classes: the other classes, or everyday phrases when the
        vocabulary names one class only."""
        named = [c for c in vocab if c != BACKGROUND]
        return named if len(named) > 1 else [p for p in EVERYDAY_PHRASES if p not in named]

    # --- training ---------------------------------------------------------------------------------
    def prepare(self, image: np.ndarray, mask: np.ndarray | None = None) -> Prepared:
        """The square input Sam3Processor makes (stretched, no padding) and the labels resized with
        it (nearest), with each class's instances."""
        x = self.backbone.normalise(image)
        labels = np.full((self.size, self.size), self.ignore_index, np.uint8)
        if mask is not None:
            labels = cv2.resize(np.asarray(mask, np.uint8), (self.size, self.size), interpolation=cv2.INTER_NEAREST)
        found = instances_of(labels, self.ignore_index)
        return Prepared(x, torch.from_numpy(labels).long(), {c: torch.from_numpy(m) for c, m in found.items()})

    def pairs(self, prepared: list[Prepared], rng: np.random.Generator) -> list[tuple[int, str, int | None]]:
        """(image index, phrase, class id or None for a hard negative) for a batch: every present
        class, and with hard negatives `negatives` absent ones per image."""
        vocab = self.vocabulary()
        pool = self.absent_pool(vocab)
        out = []
        for i, p in enumerate(prepared):
            present = [c for c in p.instances if c < len(vocab)]
            out += [(i, vocab[c], c) for c in present]
            if self.hard_negatives:
                names = {vocab[c] for c in present}
                absent = [q for q in pool if q not in names]
                for j in rng.permutation(len(absent))[: self.negatives]:
                    out.append((i, absent[j], None))
        return out

    def loss(self, prepared: list[Prepared], rng: np.random.Generator, device) -> torch.Tensor:
        pairs = self.pairs(prepared, rng)
        images = torch.stack([p.image for p in prepared]).to(device)
        if not pairs:  # no labelled object and no hard negative: nothing to learn from this batch
            return images.sum() * 0
        phrases = sorted({phrase for _, phrase, _ in pairs})
        out = self.backbone.ground(
            images, phrases, [i for i, _, _ in pairs], [phrases.index(phrase) for _, phrase, _ in pairs]
        )
        terms = [
            absent_loss(out, k) if c is None else present_loss(out, k, prepared[i].instances[c].to(device))
            for k, (i, _, c) in enumerate(pairs)
        ]
        return torch.stack(terms).mean()

    # --- prediction -------------------------------------------------------------------------------
    @torch.no_grad()
    def instance_scores(
        self, image: np.ndarray, phrases: list[str], device="cpu", boxes=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores (K, Q): each query's score, query x presence; masks (K, Q, m, m) probabilities at
        the mask head's resolution) for each phrase, the image encoded once. `boxes`: exemplar
        boxes (N, 4) xyxy in image pixels, examples of every phrase (Sam3Processor's positive
        geometric prompts)."""
        if boxes is not None and len(boxes):  # exemplar boxes are clipped to the image
            h, w = image.shape[:2]
            boxes = np.clip(np.asarray(boxes, np.float32).reshape(-1, 4), 0, [w, h, w, h])
        scores, out = self.backbone.score_concepts(image, phrases, boxes, device=device)
        return scores.float().cpu(), out["pred_masks"].sigmoid().float().cpu()

    def class_scores(
        self, image: np.ndarray, classes: list[str], device="cpu", boxes=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(class score maps (K, m, m) with background first, at the mask resolution: each class's
        best instance score x mask probability, background the threshold; per-query scores (K-1, Q))."""
        named = [c for c in classes if c != BACKGROUND]
        scores, masks = self.instance_scores(image, named, device, boxes)
        return self._maps(scores, masks), scores

    def _maps(self, scores: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """(K+1, m, m): background (the threshold) then each class's best instance score x mask
        probability."""
        maps = (scores[:, :, None, None] * masks).amax(1)
        return torch.cat([torch.full_like(maps[:1], self.threshold), maps])

    @staticmethod
    def _instance_iou(masks: torch.Tensor, scores: torch.Tensor, truth: np.ndarray, valid: np.ndarray) -> float:
        """IoU of the union of the found instances' masks (at the source size) with `truth`, over
        the `valid` (labelled) pixels."""
        union = (masks[scores > INSTANCE_THRESHOLD] > 0.5).any(0)[None, None].float()
        pred = (F.interpolate(union, truth.shape, mode="nearest")[0, 0].numpy() > 0) & valid
        return float((pred & truth).sum() / max(1, (pred | truth).sum()))

    @torch.no_grad()
    def predict(
        self,
        image: np.ndarray,
        classes: list[str] | None = None,
        device="cpu",
        threshold: float | None = None,
        boxes=None,
    ) -> tuple[np.ndarray, list[str], np.ndarray]:
        """(labels (H, W) uint8 ids into the returned class list, classes, confidence (H, W)) at the
        source resolution: each pixel's best class where its score reaches the threshold.
        `boxes`: exemplar boxes (xyxy, image pixels) of the concept."""
        from adapt.tasks.openvocab import label_map

        classes = self.vocabulary(classes)
        maps, _ = self.class_scores(image, classes, device, boxes)
        if threshold is not None:
            maps[0] = threshold
        labels, confidence = label_map(maps, image.shape[:2])
        return labels, classes, confidence

    def predict_outputs(
        self,
        image: np.ndarray,
        classes: list[str] | None = None,
        threshold: float | None = None,
        text: str | None = None,
        box=None,
        device="cpu",
        **_,
    ) -> dict:
        """What a user downloads (as the open-vocabulary task's: "main" the colour label map,
        "index", "legend", "overlay", "mask_<class>"); `text`: one phrase instead of the classes;
        `box`: an exemplar box (x0, y0, x1, y1 in image pixels, or several as rows)."""
        from adapt.tasks.openvocab import label_outputs

        classes = [text] if text else classes
        labels, classes, _ = self.predict(image, classes, device=device, threshold=threshold, boxes=box)
        return label_outputs(image, labels, classes)

    @torch.no_grad()
    def predict_many(self, images: list[np.ndarray], classes: list[str] | None = None, device="cpu") -> list[tuple]:
        """Auto-labelling: [(outputs, scores)] per image: "index" and "main" at each image's size,
        scores from adapt.uncertainty.label_uncertainty on the class score maps."""
        from adapt.render import colorize
        from adapt.tasks.openvocab import class_colors, label_map
        from adapt.uncertainty import label_uncertainty

        classes = self.vocabulary(classes)
        colors = class_colors(classes)
        results = []
        for image in images:
            maps, _ = self.class_scores(image, classes, device)
            labels, _ = label_map(maps, image.shape[:2])
            results.append(({"index": labels, "main": colorize(labels, colors)}, label_uncertainty(maps)))
        return results

    # --- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, samples, device="cpu", classes: list[str] | None = None, dis: bool = True) -> dict:
        """mIoU, pixel accuracy and per-class IoU of the label map (one confusion matrix), and "did it
        forget?": absent_fp (share of absent-class prompts that find an instance above 0.5),
        absent_score (their best instance score, the same question behind the threshold, which a
        weak model never crosses) and present_iou (IoU of a present class's instances with its
        pixels), with bootstrap intervals over images. `classes`: the dataset's, in id order
        (default: the training ones)."""
        from adapt.metrics import INTERVAL, ConfusionMatrix, confusion_statistic, intervals_over_images
        from adapt.tasks.openvocab import label_map

        self.vocabulary(classes)  # checks the names
        vocab = CLASS_MAP.classes([c.strip() for c in (classes or self.classes)])  # the dataset's ids
        named = [c for c in vocab if c != BACKGROUND]
        ids = np.array([vocab.index(c) for c in named])  # the dataset's id of each named class
        to_dataset = np.array([vocab.index(BACKGROUND), *ids])  # label_map's ids (background first) -> the dataset's
        extra = [p for p in self.absent_pool(vocab) if p not in named]  # one-class datasets' stand-ins
        cm = ConfusionMatrix(len(vocab), ignore_index=self.ignore_index)
        per_image, absent, absent_score, present = [], [], [], []
        for s in samples:
            gt = np.asarray(s.mask).astype(np.int64)
            scores, masks = self.instance_scores(s.image, named + extra, device)
            pred, _ = label_map(self._maps(scores[: len(named)], masks[: len(named)]), gt.shape)
            one = ConfusionMatrix(len(vocab), ignore_index=self.ignore_index)
            one.update(to_dataset[pred], gt)
            cm += one
            per_image.append(one.matrix)
            here = set(np.unique(gt).tolist())
            missing = [k for k in range(len(named) + len(extra)) if k >= len(named) or ids[k] not in here]
            best = scores.max(1).values.numpy()
            absent.append([float(sum(best[k] > INSTANCE_THRESHOLD for k in missing)), len(missing)])
            absent_score.append([float(sum(best[k] for k in missing)), len(missing)])
            valid = gt != self.ignore_index
            ious = [
                self._instance_iou(masks[k], scores[k], gt == ids[k], valid)
                for k in range(len(named))
                if ids[k] in here
            ]
            present.append([sum(ious), len(ious)])
        ious = cm.iou_per_class()
        out = {"miou": cm.miou(), "pixel_acc": cm.pixel_accuracy()}
        pooled = {"absent_fp": absent, "absent_score": absent_score, "present_iou": present}
        out.update({k: _pooled(np.array(v)) for k, v in pooled.items()})
        out.update({f"iou/{c}": float(ious[k]) for k, c in enumerate(vocab) if not np.isnan(ious[k])})
        names = ("miou", "pixel_acc")
        intervals = intervals_over_images({k: per_image for k in names}, {k: confusion_statistic(k) for k in names})
        intervals.update(intervals_over_images(pooled, dict.fromkeys(pooled, _pooled)))
        out[INTERVAL] = intervals
        self.last_confusion = cm
        return out


def _pooled(stack: np.ndarray) -> float:
    """The mean over every prompt of a stack of per-image (sum, count) rows; nan with no prompt."""
    stack = np.asarray(stack, np.float64).reshape(-1, 2)
    return float(stack[:, 0].sum() / stack[:, 1].sum()) if stack[:, 1].sum() else float("nan")
