"""Dichotomous segmentation with SAM: one accurate binary foreground mask per image.

SAM's conventions throughout: the image is resized so its longest side is the encoder size,
normalised, and padded bottom/right to a square; the mask decoder's low-resolution logits are
upsampled to the padded frame, the padding is cropped and the result resized to the source size.

Training prompts: the ground-truth box with each side moved by U[0, jitter) px (jitter given at
SAM's 1024-px scale and rescaled to the encoder size), points sampled inside the mask, the whole
image as the box (the prompt-free mode), a mix of these, or "clicks": the prompt-free mode where
half the time one to three clicks (foreground inside the mask, background outside) come with the
whole-image box, so that clicks can correct a prompt-free mask. Evaluation uses the exact box (no
jitter), or the whole image in the prompt-free modes. Loss: BCE + soft Dice on the upsampled
logits, padding excluded (soft Dice: the official remote-sensing script's thresholded Dice has no
gradient).

Prediction at full resolution (``predict`` / ``predict_outputs``): one global pass at the encoder
size, then, for images larger than that, the uncertain band of the result is refined with
overlapping crops at a higher resolution (adapt.highres), each crop prompted with the box of the
coarse mask inside it (or the whole crop where it has none) and the clicks that fall inside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch.nn import functional as F

from adapt.data.augment import Letterbox, letterbox, unletterbox
from adapt.highres import Box, CropPlan, RefineConfig
from adapt.highres import refine as refine_crops
from adapt.tasks.masks import BINARY, MaskKind

PROMPTS = ("box", "points", "none", "mixed", "clicks")


MAX_COORD = 1_000_000  # a click's or box corner's position in source pixels: beyond any image the loaders accept


def _prompt_rows(text: str | None, what: str, form: str, sizes: tuple[int, ...], positions: int):
    """(part, numbers) of each non-empty ';'-separated part of a prompt's text: `sizes` numbers
    separated by commas, the first `positions` of them pixel positions (finite, 0 to MAX_COORD). A
    malformed part is a ValueError that shows it and the expected `form`."""
    for part in (text or "").split(";"):
        part = part.strip()
        if not part:
            continue
        try:
            values = [float(v) for v in part.split(",")]
        except ValueError:
            values = []
        if len(values) not in sizes:
            raise ValueError(f"{what} are {form} separated by ';', got {part!r}")
        coords = values[:positions]
        if not all(math.isfinite(v) for v in values) or not 0 <= min(coords) <= max(coords) <= MAX_COORD:
            raise ValueError(f"{what} are pixel positions (0 to {MAX_COORD:,}), got {part!r}")
        yield part, values


def parse_points(text: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    """Clicks written as text, "x,y[,label]; x,y[,label]" (source pixels; label 1 foreground, 0
    background, default 1), as (coords (N, 2) float32, labels (N,) int64); None when empty.
    The one reader of this format: the CLI's --points and the studio's clicks both use it."""
    coords, labels = [], []
    for part, values in _prompt_rows(text, "clicks", "'x,y' or 'x,y,label'", (2, 3), 2):
        if len(values) == 3 and values[2] not in (0, 1):
            raise ValueError(f"a click's label is 1 (foreground) or 0 (background), got {part!r}")
        coords.append(values[:2])
        labels.append(int(values[2]) if len(values) == 3 else 1)
    if not coords:
        return None
    return np.asarray(coords, dtype=np.float32), np.asarray(labels, dtype=np.int64)


def parse_boxes(text: str | None) -> np.ndarray | None:
    """Boxes written as text, "x0,y0,x1,y1; x0,y0,x1,y1" (source pixels, x0 < x1 and y0 < y1), as
    (N, 4) float32; None when empty. The one reader of this format (the studio's exemplar boxes)."""
    boxes = []
    for part, (x0, y0, x1, y1) in _prompt_rows(text, "boxes", "'x0,y0,x1,y1'", (4,), 4):
        if not (x0 < x1 and y0 < y1):
            raise ValueError(f"boxes go from the top-left to the bottom-right corner (x0 < x1, y0 < y1), got {part!r}")
        boxes.append([x0, y0, x1, y1])
    return np.asarray(boxes, dtype=np.float32) if boxes else None


@dataclass
class Prepared:
    image: torch.Tensor  # (3, S, S) normalised, padded
    mask: torch.Tensor  # (S, S) float 0/1, padded with 0
    valid: torch.Tensor  # (S, S) bool, False on padding
    box: Letterbox  # how the source image was resized and padded
    stretched: bool = False  # resized to the square without keeping its aspect ratio (SAM 2)
    key: str | None = None  # the image's key in an embedding cache (adapt.embedding_cache); image may then be None

    @property
    def scale(self) -> float:
        return self.box.scale

    @property
    def scale_xy(self) -> tuple[float, float]:
        """Source pixels -> input frame, per axis (equal unless stretched)."""
        if not self.stretched:
            return self.box.scale, self.box.scale
        (h, w), size = self.box.original_size, self.box.size
        return size / w, size / h

    @property
    def size(self) -> tuple[int, int]:
        """The source image's (h, w)."""
        return self.box.original_size


class DichotomousTask:
    name = "dichotomous"
    title = "Dichotomous (SAM: one foreground mask)"
    family = "sam"
    needs = None  # every architecture of the family
    mask: ClassVar[MaskKind] = BINARY  # one foreground mask
    default_options: ClassVar[dict] = {"prompt": "box"}  # what a run is trained with unless told otherwise
    exemplars: ClassVar[bool] = False  # its box is the one object to segment, not an example of a concept

    @classmethod
    def options_from(cls, dataset, prompt: str | None = None) -> dict:
        """A binary dataset determines nothing; the prompt is the caller's choice (default "box")."""
        return {"prompt": prompt} if prompt is not None else {}

    @staticmethod
    def attach_head(backbone) -> None:
        """SAM's mask decoder is the head, and it is part of the model already."""

    def __init__(self, backbone, prompt: str = "box", box_jitter: float = 20.0, num_points: int = 3):
        if backbone.family != "sam":
            raise ValueError(f"the dichotomous task runs on SAM backbones, not {backbone.name!r}")
        if prompt not in PROMPTS:
            raise ValueError(f"prompt must be one of {PROMPTS}, not {prompt!r}")
        self.backbone = backbone
        self.prompt = prompt
        self.size = backbone.input_size
        self.pixel_mean = backbone.pixel_mean  # (3, 1, 1) on 0..255 pixels
        self.pixel_std = backbone.pixel_std
        self.stretch = backbone.resize == "stretch"  # SAM 2: a square resize, no padding
        self.box_jitter = box_jitter * self.size / 1024.0
        self.num_points = num_points
        self.augment_options = {}  # binary masks: the augmentations' defaults
        self.embedding_cache = None  # set by the trainer when the image encoder is frozen (adapt.embedding_cache)

    # --- geometry ---------------------------------------------------------------------------------
    def prepare(self, image: np.ndarray, mask: np.ndarray | None = None) -> Prepared:
        """SAM's input: letterboxed (longest side -> encoder size, padded bottom/right), normalised,
        the padding zero in the normalised frame as in Sam.preprocess; the mask letterboxed alike.
        SAM 2's: resized to the square (bilinear, antialiased, as SAM2Transforms), normalised."""
        if self.stretch:
            return self._prepare_stretched(image, mask)
        padded, box = letterbox(image, self.size)
        x = (torch.from_numpy(padded).permute(2, 0, 1).float() - self.pixel_mean) / self.pixel_std
        nh, nw = box.resized_size
        x[:, nh:], x[:, :, nw:] = 0, 0
        m = torch.zeros(self.size, self.size)
        if mask is not None:
            m = torch.from_numpy(letterbox((mask > 0).astype(np.uint8), self.size, nearest=True)[0]).float()
        valid = torch.zeros(self.size, self.size, dtype=torch.bool)
        valid[:nh, :nw] = True
        return Prepared(x, m, valid, box)

    def _prepare_stretched(self, image: np.ndarray, mask: np.ndarray | None) -> Prepared:
        size, (h, w) = self.size, image.shape[:2]
        x = torch.tensor(image).permute(2, 0, 1)[None].float() / 255.0
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        x = (x * 255.0 - self.pixel_mean) / self.pixel_std
        m = torch.zeros(size, size)
        if mask is not None:
            m = torch.from_numpy((mask > 0).astype(np.float32))[None, None]
            m = F.interpolate(m, size=(size, size), mode="nearest-exact")[0, 0]
        box = Letterbox((h, w), (size, size), size, size / max(h, w))
        return Prepared(x, m, torch.ones(size, size, dtype=torch.bool), box, stretched=True)

    def box_of(self, mask: torch.Tensor) -> torch.Tensor:
        ys, xs = torch.nonzero(mask > 0, as_tuple=True)
        if len(ys) == 0:
            return torch.tensor([0.0, 0.0, self.size - 1.0, self.size - 1.0])
        return torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()

    def whole_image_box(self, prepared: Prepared) -> torch.Tensor:
        ys, xs = torch.nonzero(prepared.valid, as_tuple=True)
        return torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()

    def sample_prompt(self, prepared: Prepared, rng: np.random.Generator, mode: str) -> dict:
        if mode == "mixed":
            mode = ("box", "points", "none")[rng.integers(3)]
        if mode == "clicks":
            return self._sample_clicks(prepared, rng)
        if mode == "none" or not bool((prepared.mask > 0).any()):  # an augmentation may crop the object away
            return {"box": self.whole_image_box(prepared)}
        if mode == "box":
            box = self.box_of(prepared.mask)
            shift = torch.from_numpy(rng.uniform(0, self.box_jitter, 4) * rng.choice([-1, 1], 4)).float()
            box = (box + shift).clamp(0, self.size - 1)
            return {"box": box}
        ys, xs = torch.nonzero(prepared.mask > 0, as_tuple=True)
        idx = rng.integers(0, len(ys), self.num_points)
        coords = torch.stack([xs[idx], ys[idx]], dim=1).float()
        return {"points": (coords, torch.ones(self.num_points, dtype=torch.long))}

    def _sample_clicks(self, prepared: Prepared, rng: np.random.Generator) -> dict:
        """The whole-image box, and half the time 1-3 clicks: each foreground (a pixel of the mask)
        or background (a valid pixel outside it) with equal odds, as a user correcting a mask would."""
        prompt = {"box": self.whole_image_box(prepared)}
        if rng.random() < 0.5:
            return prompt
        inside = torch.nonzero(prepared.mask > 0)
        outside = torch.nonzero((prepared.mask == 0) & prepared.valid)
        coords, labels = [], []
        for _ in range(int(rng.integers(1, 4))):
            positive = bool(rng.random() < 0.5) if len(inside) and len(outside) else bool(len(inside))
            pool = inside if positive else outside
            y, x = pool[int(rng.integers(len(pool)))].tolist()
            coords.append([float(x), float(y)])
            labels.append(int(positive))
        prompt["points"] = (torch.tensor(coords), torch.tensor(labels, dtype=torch.long))
        return prompt

    def eval_prompt(self, prepared: Prepared) -> dict:
        if self.prompt in ("none", "clicks"):
            return {"box": self.whole_image_box(prepared)}
        if self.prompt == "points":
            return self.sample_prompt(prepared, np.random.default_rng(0), "points")
        return {"box": self.box_of(prepared.mask)}

    # --- model calls ------------------------------------------------------------------------------
    def _logits(self, prepared: list[Prepared], prompts: list[dict], device) -> torch.Tensor:
        """(B, S, S) logits in the padded input frame (the image embeddings from the embedding
        cache when the trainer set one: adapt.embedding_cache)."""
        if self.embedding_cache is not None:
            embeddings, _ = self.embedding_cache.embeddings(
                [p.image for p in prepared], [p.key for p in prepared], device
            )
        else:
            embeddings = self.encode(torch.stack([p.image for p in prepared]).to(device))
        if all(set(p) == {"box"} for p in prompts):
            low = self.decode(embeddings, boxes=torch.stack([p["box"] for p in prompts]).to(device))
        else:  # one prompt kind per call: group by kind
            low = torch.cat(
                [self.decode(embeddings[i : i + 1], **self._prompt_kwargs(p, device)) for i, p in enumerate(prompts)]
            )
        return self._upsampled(low)

    def encode(self, images: torch.Tensor):
        """Image embeddings of prepared images (B, 3, S, S): the image encoder (SAM: a (B, C, g, g)
        tensor; SAM 2: its feature pyramid, sliced by image alike). With `decode`, the two network
        calls of every prediction (the ONNX runner swaps both)."""
        return self.backbone.encode(images)

    def decode(self, embeddings, **prompt) -> torch.Tensor:
        """Low-resolution mask logits (B, 1, 4g, 4g) from embeddings and a prompt (boxes / points /
        masks, see adapt.backbones.sam.sam_decode): the prompt encoder and the mask decoder."""
        return self.backbone.decode(embeddings, **prompt)

    def _upsampled(self, low: torch.Tensor) -> torch.Tensor:
        """Low-resolution decoder logits (B, 1, h, w) -> (B, S, S) in the padded input frame."""
        return F.interpolate(low, size=(self.size, self.size), mode="bilinear", align_corners=False)[:, 0]

    @staticmethod
    def _prompt_kwargs(prompt: dict, device) -> dict:
        kwargs = {}
        if "box" in prompt:
            kwargs["boxes"] = prompt["box"][None].to(device)
        if "points" in prompt:
            coords, labels = prompt["points"]
            kwargs["points"] = (coords[None].to(device), labels[None].to(device))
        if prompt.get("mask") is not None:
            kwargs["masks"] = prompt["mask"].reshape(1, 1, *prompt["mask"].shape[-2:]).to(device)
        return kwargs

    def source_prompt(
        self,
        prepared: Prepared,
        box=None,
        coords=None,
        labels=None,
        whole_box: bool = False,
        mask_input: torch.Tensor | None = None,
    ) -> dict:
        """A prompt given in source pixels, in the padded input frame: box xyxy and/or points (N, 2)
        xy with labels (1 foreground, 0 background; all 1 when not given); neither: the whole image.

        whole_box: clicks come with the whole-image box (a prompt-free mask corrected by clicks);
        mask_input: the low-resolution logits of an earlier prediction on the same image (SAM's
        mask_input; only useful with a prompt encoder trained on mask inputs, see sam_decode).
        """
        prompt = {}
        xy = torch.tensor(prepared.scale_xy)
        if box is not None:
            prompt["box"] = torch.as_tensor(box, dtype=torch.float32) * xy.repeat(2)
        elif whole_box:
            prompt["box"] = self.whole_image_box(prepared)
        if coords is not None and len(coords):
            labels = np.ones(len(coords)) if labels is None else labels
            prompt["points"] = (
                torch.as_tensor(np.asarray(coords), dtype=torch.float32).reshape(-1, 2) * xy,
                torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1),
            )
        prompt = prompt or {"box": self.whole_image_box(prepared)}
        if mask_input is not None:
            prompt["mask"] = mask_input
        return prompt

    @torch.no_grad()
    def decode_embedded(
        self, prepared: Prepared, embedding: torch.Tensor, prompt: dict, device="cpu"
    ) -> tuple[np.ndarray, torch.Tensor]:
        """(probability at the source resolution, low-resolution logits (1, 1, h, w)) from an image
        embedding already computed: only the prompt encoder and mask decoder run (what a cached
        click costs). The logits can go back in as the next click's mask_input."""
        low = self.decode(embedding, **self._prompt_kwargs(prompt, device))
        if prepared.stretched:  # SAM2Transforms.postprocess_masks: the logits straight to the source size
            logits = F.interpolate(low[:, :1].float(), size=prepared.size, mode="bilinear", align_corners=False)
            return torch.sigmoid(logits[0, 0]).cpu().numpy(), low
        return self.to_source(torch.sigmoid(self._upsampled(low)[0]), prepared), low

    def predict_embedded(self, prepared: Prepared, embedding: torch.Tensor, prompt: dict, device="cpu") -> np.ndarray:
        """Foreground probability at the source resolution from an image embedding already computed."""
        return self.decode_embedded(prepared, embedding, prompt, device)[0]

    def loss(self, prepared: list[Prepared], rng: np.random.Generator, device) -> torch.Tensor:
        prompts = [self.sample_prompt(p, rng, self.prompt) for p in prepared]
        logits = self._logits(prepared, prompts, device)
        target = torch.stack([p.mask for p in prepared]).to(device)
        valid = torch.stack([p.valid for p in prepared]).to(device).float()
        return bce_dice_loss(logits, target, valid)

    def should_refine(self, shape: tuple[int, int]) -> bool:
        """Refinement pays off once the global pass has to shrink the image noticeably."""
        return max(shape[:2]) > 1.25 * self.size

    @torch.no_grad()
    def predict(
        self,
        image: np.ndarray,
        box=None,
        points=None,
        refine: bool | None = None,
        device="cpu",
        whole_box: bool = False,
        config: RefineConfig | None = None,
    ) -> np.ndarray:
        """Foreground probability (H, W) float32 at the source resolution.

        box: xyxy in source pixels; points: (coords (N, 2) xy in source pixels, labels (N,)), alone,
        with the box, or with the whole-image box (whole_box); neither: prompt-free (the whole image
        as the box). refine: crop refinement of the uncertain band at a higher resolution (True,
        False, or None: when the image is larger than the encoder input, see should_refine).
        """
        return self.predict_refined(image, box, points, refine, device, whole_box, config)[0]

    @torch.no_grad()
    def predict_refined(
        self,
        image: np.ndarray,
        box=None,
        points=None,
        refine: bool | None = None,
        device="cpu",
        whole_box: bool = False,
        config: RefineConfig | None = None,
    ) -> tuple[np.ndarray, CropPlan | None]:
        """`predict`, also returning the crop plan (None when not refined)."""
        prepared = self.prepare(image)
        coords, labels = points if points is not None else (None, None)
        embedding = self.encode(prepared.image[None].to(device))
        prompt = self.source_prompt(prepared, box, coords, labels, whole_box=whole_box)
        coarse = self.predict_embedded(prepared, embedding, prompt, device)
        del embedding, prepared
        if not (self.should_refine(image.shape) if refine is None else refine):
            return coarse, None
        config = config or RefineConfig()
        predict_crops = self.crop_predictor(image, coarse, coords, labels, device=device)
        return refine_crops(coarse, predict_crops, self.size, config, inplace=True)

    def crop_predictor(
        self, image: np.ndarray, coarse: np.ndarray, coords=None, labels=None, device="cpu", prompt: str = "box"
    ):
        """predict(boxes) -> [probability (y1 - y0, x1 - x0)] for crops (y0, x0, y1, x1) of `image`.

        Each crop is encoded at the encoder size (one batch per call) and prompted with the box of
        the coarse mask inside it, grown by 2% of the crop side (prompt "box"; the whole crop where
        the coarse mask has nothing, or always with prompt "none"), plus the clicks inside it.
        """
        if prompt not in ("box", "none"):
            raise ValueError(f"crop prompt must be 'box' or 'none', not {prompt!r}")
        coords = None if coords is None else np.asarray(coords, dtype=np.float32).reshape(-1, 2)
        labels = None if coords is None else (np.ones(len(coords)) if labels is None else np.asarray(labels))

        def predict(boxes: list[Box]) -> list[np.ndarray]:
            prepared = [self.prepare(np.ascontiguousarray(image[y0:y1, x0:x1])) for y0, x0, y1, x1 in boxes]
            embeddings = self.encode(torch.stack([p.image for p in prepared]).to(device))
            out = []
            for i, ((y0, x0, y1, x1), p) in enumerate(zip(boxes, prepared)):
                crop_box = None
                if prompt == "box":
                    ys, xs = np.nonzero(coarse[y0:y1, x0:x1] > 0.5)
                    if len(ys):
                        grow = 0.02 * max(y1 - y0, x1 - x0)
                        crop_box = [
                            max(0.0, xs.min() - grow),
                            max(0.0, ys.min() - grow),
                            min(x1 - x0 - 1.0, xs.max() + grow),
                            min(y1 - y0 - 1.0, ys.max() + grow),
                        ]
                inside = None
                if coords is not None:
                    keep = (coords[:, 0] >= x0) & (coords[:, 0] < x1) & (coords[:, 1] >= y0) & (coords[:, 1] < y1)
                    inside = (coords[keep] - [x0, y0], labels[keep]) if keep.any() else None
                crop_prompt = self.source_prompt(p, crop_box, *(inside or (None, None)), whole_box=True)
                out.append(self.predict_embedded(p, embeddings[i : i + 1], crop_prompt, device))
            return out

        return predict

    def predict_outputs(
        self,
        image: np.ndarray,
        box=None,
        points=None,
        refine=None,
        device="cpu",
        whole_box: bool = False,
        config: RefineConfig | None = None,
        text: str | None = None,
    ) -> dict:
        """What a user downloads, all at the source resolution: "main" the binary mask (0/255),
        "alpha" the soft mask (0-255), "cutout" RGBA with the background removed, "overlay" for
        preview. refine None: refined when the image is larger than the encoder input. `text`: a
        phrase instead of a box or clicks (SAM 3): the union of its instances' masks."""
        from adapt.render import cutout, overlay

        if text is not None:
            prob = self.predict_text(image, text)
        else:
            prob = self.predict(
                image, box=box, points=points, refine=refine, device=device, whole_box=whole_box, config=config
            )
        alpha = np.round(prob * 255).astype(np.uint8)
        del prob
        return {
            "main": np.where(alpha > 127, 255, 0).astype(np.uint8),
            "alpha": alpha,
            "cutout": cutout(image, alpha),
            "overlay": overlay(image, alpha.astype(np.float32) / 255),
        }

    def predict_text(self, image: np.ndarray, text: str) -> np.ndarray:
        """Foreground probability (H, W) at the source resolution for a phrase: the union of its
        instances' masks (Backbone.segment_text: SAM 3's; other backbones say they take none)."""
        masks = self.backbone.segment_text(image, text)["masks"]
        return masks.max(axis=0) if len(masks) else np.zeros(image.shape[:2], np.float32)

    @torch.no_grad()
    def predict_many(
        self, images: list[np.ndarray], device="cpu", refine: bool | None = None, text: str | None = None
    ) -> list[tuple]:
        """Auto-labelling: prompt-free masks for a batch of images, the encoder run once on the
        batch, or with `text` each image's instances of the phrase (predict_text). Returns
        [(outputs, scores)] in order: outputs "main" (0/255) and "alpha" (0-255 soft mask) at each
        image's resolution; scores from adapt.uncertainty.mask_uncertainty. Images larger than the
        encoder input are refined as `predict` refines them (refine None)."""
        from adapt.uncertainty import mask_uncertainty

        probs = [self.predict_text(i, text) for i in images] if text else self._prompt_free(images, device, refine)
        results = []
        for prob in probs:
            alpha = np.round(prob * 255).astype(np.uint8)
            results.append(
                ({"main": np.where(alpha > 127, 255, 0).astype(np.uint8), "alpha": alpha}, mask_uncertainty(prob))
            )
        return results

    def _prompt_free(self, images: list[np.ndarray], device, refine: bool | None) -> list[np.ndarray]:
        """Each image's foreground probability with the whole image as its box, encoded as one batch."""
        prepared = [self.prepare(image) for image in images]
        embeddings = self.encode(torch.stack([p.image for p in prepared]).to(device))
        probs = []
        for i, (image, p) in enumerate(zip(images, prepared)):
            prob = self.predict_embedded(p, embeddings[i : i + 1], {"box": self.whole_image_box(p)}, device)
            if self.should_refine(image.shape) if refine is None else refine:
                prob = refine_crops(prob, self.crop_predictor(image, prob, device=device), self.size, RefineConfig())[0]
            probs.append(prob)
        return probs

    def to_source(self, prob: torch.Tensor, prepared: Prepared) -> np.ndarray:
        """(S, S) in the padded input frame -> (H, W) float32 at the source resolution."""
        return unletterbox(prob.float(), prepared.box).cpu().numpy()

    @torch.no_grad()
    def evaluate(self, samples, device="cpu", dis: bool = True) -> dict:
        """Held-out scores with the evaluation prompt: mean IoU and Dice (with their bootstrap
        intervals over the images under "interval"), and the DIS metric set."""
        from adapt.metrics import INTERVAL, DISMetrics, dice, intervals_over_images, iou

        ious, dices = [], []
        dis_metrics = DISMetrics(hce=False) if dis else None  # HCE costs ~0.5 s per 1024^2 image
        for s in samples:
            prepared = self.prepare(s.image, s.mask)
            logits = self._logits([prepared], [self.eval_prompt(prepared)], device)[0]
            prob = self.to_source(torch.sigmoid(logits), prepared)
            gt = s.mask > 0
            ious.append(iou(prob > 0.5, gt))
            dices.append(dice(prob > 0.5, gt))
            if dis_metrics is not None:
                dis_metrics.step(prob, gt)
        out = {"iou": float(np.mean(ious)), "dice": float(np.mean(dices))}
        out[INTERVAL] = intervals_over_images({"iou": ious, "dice": dices})  # over the images
        if dis_metrics is not None:
            out.update(dis_metrics.results())
        return out


def bce_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None, eps: float = 1.0
) -> torch.Tensor:
    """Mean BCE + soft Dice over (B, H, W) logits; `valid` masks out padding."""
    logits = logits.float()
    if valid is None:
        valid = torch.ones_like(target)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = (bce * valid).sum(dim=(1, 2)) / valid.sum(dim=(1, 2)).clamp_min(1)
    prob = torch.sigmoid(logits) * valid
    inter = (prob * target).sum(dim=(1, 2))
    soft_dice = 1 - (2 * inter + eps) / (prob.sum(dim=(1, 2)) + (target * valid).sum(dim=(1, 2)) + eps)
    return (bce + soft_dice).mean()
