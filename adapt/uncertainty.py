"""How unsure a prediction is: one number per image to rank auto-labelled images for correction.

Dichotomous (a foreground probability map p):
    uncertainty = 1 - stability,  stability = |p > sigmoid(+d)| / |p > sigmoid(-d)|,  d = 1 logit

This is SAM's own stability score (segment-anything's automatic mask generator keeps masks whose
stability is high) turned around: the share of the mask that exists at a low threshold but not at
a high one, i.e. the uncertain band relative to the object's size. Why this and not the others:
- mean binary entropy is dominated by how much of the image is confident background, so it ranks
  images with small objects as "sure" whatever their boundary; it is reported, not ranked by;
- the fraction of the image in the uncertain band grows with the object's perimeter, so large
  objects look unsure; dividing by the low-threshold area makes it scale-free;
- disagreement between prompt modes or flips costs a second encoder pass per image.
An image where nothing passes the low threshold gets 1: for a foreground-mask task, "no object"
is the prediction most worth a look.

Open-vocabulary (per-class probabilities s, (K, h, w)):
    margin = top-1 - top-2 class probability per pixel;  uncertainty = 1 - mean margin
computed at the model's score resolution, reported with the share of pixels whose margin is
under 0.1 (the ambiguous pixels).

Both return a dict of plain floats: "uncertainty" first, then the numbers it comes from.
"""

from __future__ import annotations

import math

import numpy as np
import torch

STABILITY_OFFSET = 1.0  # logits: the thresholds are sigmoid(-1) = 0.27 and sigmoid(+1) = 0.73
AMBIGUOUS_MARGIN = 0.1


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def mask_uncertainty(prob: np.ndarray, offset: float = STABILITY_OFFSET) -> dict:
    """Scores of one foreground probability map (H, W) in [0, 1] (any resolution)."""
    prob = np.asarray(prob, dtype=np.float32)
    low = int(np.count_nonzero(prob > _sigmoid(-offset)))
    high = int(np.count_nonzero(prob > _sigmoid(offset)))
    stability = high / low if low else 0.0
    p = np.clip(prob, 1e-6, 1 - 1e-6)
    entropy = float(np.mean(-(p * np.log2(p) + (1 - p) * np.log2(1 - p))))
    return {
        "uncertainty": round(1.0 - stability, 6),
        "stability": round(stability, 6),
        "foreground": round(float(np.count_nonzero(prob > 0.5)) / prob.size, 6),
        "entropy_bits": round(entropy, 6),
    }


def label_uncertainty(scores: torch.Tensor | np.ndarray) -> dict:
    """Scores of one per-class probability map (K, h, w)."""
    scores = torch.as_tensor(scores, dtype=torch.float32)
    if scores.shape[0] < 2:
        return {"uncertainty": 0.0, "mean_margin": 1.0, "ambiguous": 0.0}
    top = scores.topk(2, dim=0).values
    margin = top[0] - top[1]
    return {
        "uncertainty": round(1.0 - float(margin.mean()), 6),
        "mean_margin": round(float(margin.mean()), 6),
        "ambiguous": round(float((margin < AMBIGUOUS_MARGIN).float().mean()), 6),
    }
