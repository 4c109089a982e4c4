"""COBOT: cross-block orchestration (SAM-COBOT, CVPR'24, arXiv 2311.17112), a plug-in for LoRA
(`cobot-lora`) and AdaptFormer (`cobot-adaptformer`) on SAM's image encoder.

Every bottleneck h (width V: A x for LoRA, down(LN(x)) for AdaptFormer) of slice t becomes

    z = Q_t(h * lambda_t + gamma_t * h),   lambda_t = (C S)[:, t]

- C in R^{V x T} (init ones) and the relation matrix S in R^{T x T} (init identity) are shared by all
  blocks: inter-block communication mixes the slices' coefficient sets. T = L for AdaptFormer,
  T = 2L for LoRA (one slice for q, one for v).
- gamma_t in R^V (init ones) is the un-mixed ("Markov-chain") set of slice t.
- Q_t is the intra-block enhancement: a V x V linear map whose weight is a quaternion layer, four
  (V/4) x (V/4) blocks r, i, j, k in the Hamilton-product arrangement
  [[r, i, j, k], [-i, r, k, -j], [-j, -k, r, i], [-k, j, -i, r]], 4 (V/4)^2 parameters, no bias.
Extra parameters on ViT-B: +864 on LoRA r=4, +1,296 on AdaptFormer V=16.

Across a pyramid encoder (SAM 2's Hiera, whose four stages have widths E, 2E, 4E, 8E), one
orchestration spans every block of every stage: T = L (or 2L) over all of Hiera's blocks. The
coefficient sets, the relation matrix S and the quaternion heads all live in the bottleneck space
of width V (LoRA's rank, AdaptFormer's bottleneck), which is the same in every block whatever the
block's width; only A / B and down / up change shape from stage to stage. COBOT's point is that
blocks communicate through shared coefficients instead of adapting in isolation; cutting the
relation matrix at stage boundaries (one orchestration per stage) would remove exactly the
communication between early and late blocks that the paper argues for, with nothing in the maths
requiring it.

Identity at step 0 comes from the base method's zero-initialised B / up. Our choice for Q's
initialisation (the paper does not fix it): r = I/2, i = j = k = 0 by default, so that at step 0
z = Q(2h) = h and COBOT starts as exactly the base method (same output and same first gradient
for B / up); any difference after training is then the orchestration's doing. `quaternion_init=
"random"` uses a small random init instead (Glorot scale over the V x V map).
Everything COBOT adds is linear in h, so merge folds Q_t diag(lambda_t + gamma_t) into A / down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from adapt.methods.adaptformer import AdaptFormer, AdaptFormerConfig
from adapt.methods.base import Float32Module, MemoryProfile, Variant
from adapt.methods.lora import Lora, LoraConfig


def hamilton_matrix(r, i, j, k) -> torch.Tensor:
    """The real V x V matrix of a quaternion linear map from its four (V/4)x(V/4) components."""
    return torch.cat(
        [
            torch.cat([r, i, j, k], dim=1),
            torch.cat([-i, r, k, -j], dim=1),
            torch.cat([-j, -k, r, i], dim=1),
            torch.cat([-k, j, -i, r], dim=1),
        ],
        dim=0,
    )


class CobotCoefficients(Float32Module):
    """The shared coefficient sets, relation matrix and per-slice quaternion heads."""

    def __init__(self, width: int, slices: int, quaternion_init: str = "identity", like: torch.Tensor | None = None):
        super().__init__()
        if width % 4:
            raise ValueError(f"COBOT's quaternion head needs a bottleneck width divisible by 4, got {width}")
        kw = dict(device=like.device, dtype=torch.float32) if like is not None else {}
        q = width // 4
        self.width, self.slices = width, slices
        self.C = nn.Parameter(torch.ones(width, slices, **kw))
        self.S = nn.Parameter(torch.eye(slices, **kw))
        self.gamma = nn.Parameter(torch.ones(slices, width, **kw))
        quat = torch.zeros(4, slices, q, q, **kw)
        if like is None or not like.is_meta:
            if quaternion_init == "identity":
                quat[0] = 0.5 * torch.eye(q, **kw)
            elif quaternion_init == "random":
                quat.normal_(0.0, math.sqrt(2.0 / (2 * width)))
            else:
                raise ValueError(f"quaternion_init must be 'identity' or 'random', not {quaternion_init!r}")
        self.quaternion = nn.Parameter(quat)

    def scale(self, t: int) -> torch.Tensor:
        """lambda_t + gamma_t: what multiplies h elementwise before the quaternion head."""
        return (self.C @ self.S)[:, t] + self.gamma[t]

    def quaternion_weight(self, t: int) -> torch.Tensor:
        r, i, j, k = self.quaternion[:, t]
        return hamilton_matrix(r, i, j, k)

    def forward(self, h: torch.Tensor, t: int) -> torch.Tensor:
        z = h * self.scale(t).to(h.dtype)
        return z @ self.quaternion_weight(t).to(h.dtype).t()

    def matrix(self, t: int) -> torch.Tensor:
        """M_t with forward(h, t) == h @ M_t^T, for merging."""
        return self.quaternion_weight(t) * self.scale(t)[None, :]


@dataclass
class CobotLoraConfig(LoraConfig):
    quaternion_init: str = "identity"


@dataclass
class CobotAdaptFormerConfig(AdaptFormerConfig):
    quaternion_init: str = "identity"


class _CobotMixin:
    """Creates the shared coefficients, hangs them on the model, registers them as coefficients."""

    slices_per_block = 1

    def _make_mixer(self, depth: int, width: int):
        like = next(self.model.get_submodule(self.backbone.layout().encoder).parameters())
        mixer = CobotCoefficients(width, self.slices_per_block * depth, self.config.quaternion_init, like)
        self.model.add_module("cobot", mixer)
        for p in mixer.parameters():
            self._add_adapter_param(p, coefficient=True)
        return mixer

    def _detach(self) -> None:
        super()._detach()
        del self.model.cobot

    def _merge(self) -> None:
        super()._merge()
        self._mixer_module = self.model.cobot
        del self.model.cobot  # the merged model carries no COBOT module

    def _unmerge(self) -> None:
        self.model.add_module("cobot", self._mixer_module)
        super()._unmerge()


class CobotLora(_CobotMixin, Lora):
    name = "cobot-lora"
    Config = CobotLoraConfig
    slices_per_block = 2
    summary = "LoRA plus cross-block coefficient orchestration (+864 parameters on ViT-B)."
    memory = MemoryProfile("qkv")
    variants = (
        Variant(
            {"quaternion_init": "random"}, "random quaternion heads (the paper leaves the init open)", compare=False
        ),
    )


class CobotAdaptFormer(_CobotMixin, AdaptFormer):
    name = "cobot-adaptformer"
    Config = CobotAdaptFormerConfig
    slices_per_block = 1
    summary = "AdaptFormer plus cross-block coefficient orchestration (+1,296 parameters on ViT-B)."
    memory = MemoryProfile("adapter")
