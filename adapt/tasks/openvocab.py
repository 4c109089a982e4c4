"""Open-vocabulary segmentation with CLIP: a CAT-Seg-style cost-volume head.

The head sees CLIP only through a cosine cost volume between dense patch embeddings and class text
embeddings, so it works for any list of class names, including ones never labelled.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

DEFAULT_TEMPLATES = ["a photo of a {} in the scene."]


class _ResConv(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)
        self.norm = nn.GroupNorm(4, ch)

    def forward(self, x):
        return x + F.gelu(self.norm(self.conv(x)))


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
            nn.ConvTranspose2d(hidden, hidden // 2, 2, stride=2), nn.GELU(),
            nn.ConvTranspose2d(hidden // 2, hidden // 4, 2, stride=2), nn.GELU(),
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
