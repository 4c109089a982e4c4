"""LoRA on SAM's (and SAM 2's Hiera) image encoder: low-rank updates of q and v inside every
block's attn.qkv.

delta_q = B_q A_q x, delta_v = B_v A_v x, rank r (default 4), A kaiming-uniform, B zero, so the
adapted model equals SAM at step 0 (the SAM-COBOT official code does not zero B; we do, for
identity at step 0). 147,456 parameters on ViT-B. The bottleneck h = A x is exposed to an optional
`mixer` (COBOT, see cobot.py) as slice t = 2*layer (q) and 2*layer + 1 (v).
Merge folds B M A (M = the mixer's linear map, identity without one) into a plain qkv Linear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from adapt.methods.base import MemoryProfile, MethodConfig, SwapHandle


@dataclass
class LoraConfig(MethodConfig):
    rank: int = 4
    alpha: float = 4.0  # scaling = alpha / rank; 1.0 by default, as in the SAM LoRA code


class LowRank(nn.Module):
    """One low-rank branch x -> B mixer(A x), with A (r x in) and B (out x r)."""

    def __init__(self, in_features: int, out_features: int, rank: int, like: torch.Tensor):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features, dtype=like.dtype, device=like.device))
        self.B = nn.Parameter(torch.zeros(out_features, rank, dtype=like.dtype, device=like.device))
        if not like.is_meta:
            nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x, mixer=None, t: int = 0):
        h = x @ self.A.t()
        if mixer is not None:
            h = mixer(h, t)
        return h @ self.B.t()

    def delta_weight(self, mixer=None, t: int = 0) -> torch.Tensor:
        a = self.A if mixer is None else mixer.matrix(t).to(self.A.dtype) @ self.A
        return self.B @ a


class LoraQV(nn.Module):
    """Wraps an encoder block's attn.qkv (Linear(d_in, 3 d): SAM's d_in = d, Hiera's first block of a
    stage widens) with LoRA branches on the q and v thirds."""

    def __init__(self, qkv: nn.Linear, rank: int, scaling: float, mixer=None, slices=(0, 1), heads: int = 0):
        super().__init__()
        d_in, d = qkv.in_features, qkv.out_features // 3
        self.qkv, self.scaling, self.slices, self.heads = qkv, scaling, slices, heads
        self.q = LowRank(d_in, d, rank, qkv.weight)
        self.v = LowRank(d_in, d, rank, qkv.weight)
        self._mixer = [mixer]  # a list keeps the shared mixer out of this module's parameters

    def _place(self, dq: torch.Tensor, dv: torch.Tensor) -> torch.Tensor:
        """q and v updates (..., d) in qkv's output layout (..., 3 d): thirds, or per head [q, k, v]."""
        if not self.heads:
            return torch.cat([dq, torch.zeros_like(dq), dv], dim=-1)
        lead, h = dq.shape[:-1], self.heads
        parts = [dq.reshape(*lead, h, -1), torch.zeros_like(dq).reshape(*lead, h, -1), dv.reshape(*lead, h, -1)]
        return torch.stack(parts, dim=-2).reshape(*lead, -1)

    def forward(self, x):
        mixer = self._mixer[0]
        dq = self.q(x, mixer, self.slices[0])
        dv = self.v(x, mixer, self.slices[1])
        return self.qkv(x) + self.scaling * self._place(dq, dv)

    @torch.no_grad()
    def merged_module(self) -> nn.Linear:
        mixer = self._mixer[0]
        dq = self.q.delta_weight(mixer, self.slices[0])
        dv = self.v.delta_weight(mixer, self.slices[1])
        merged = nn.Linear(
            self.qkv.in_features,
            self.qkv.out_features,
            bias=self.qkv.bias is not None,
            device=self.qkv.weight.device,
            dtype=self.qkv.weight.dtype,
        )
        merged.weight.copy_(self.qkv.weight + self.scaling * self._place(dq.t(), dv.t()).t())
        if self.qkv.bias is not None:
            merged.bias.copy_(self.qkv.bias)
        merged.requires_grad_(False)
        return merged


class Lora(SwapHandle):
    name = "lora"
    families = ("sam",)
    Config = LoraConfig
    summary = "Low-rank updates of q and v in every encoder block (r=4); about 147K parameters on ViT-B."
    memory = MemoryProfile("qkv")
    baseline_for = ("sam",)

    def _make_mixer(self, depth: int, width: int):
        """The bottleneck mixer shared by all blocks; none for plain LoRA (COBOT overrides this)."""
        return None

    def _wrap_modules(self) -> None:
        blocks = self.backbone.layout().blocks
        mixer = self._make_mixer(len(blocks), self.config.rank)
        scaling = self.config.alpha / self.config.rank
        for i, block in enumerate(blocks):
            w = self.swaps.wrap(
                f"{block.path}.{block.qkv}",
                lambda m, i=i, h=block.qkv_heads: LoraQV(m, self.config.rank, scaling, mixer, (2 * i, 2 * i + 1), h),
            )
            for p in (w.q.A, w.q.B, w.v.A, w.v.B):
                self._add_adapter_param(p)
