"""LoRA on CLIP (the H-CLIP paper's LoRA baseline): low-rank updates of W_q, W_k, W_v and W_o in
every attention block of both towers.

open_clip's attention is nn.MultiheadAttention, whose forward reads in_proj_weight directly, so
the update is applied in weight space (a parametrization W + (alpha/r) B A per target), which is
the same function as LoRA's activation-space branch. B is zero-initialised (identity at step 0).
Merge leaves W + (alpha/r) B A as a plain weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from adapt.backbones.clip import attention_targets
from adapt.methods.base import MemoryProfile, WeightSpaceHandle
from adapt.methods.lora import LoraConfig, LowRank


@dataclass
class LoraClipConfig(LoraConfig):
    rank: int = 8
    alpha: float = 8.0


class LowRankDelta(nn.Module):
    """Parametrization: W + scaling * [B_1 A_1; ...; B_n A_n] over n equal row slices of W."""

    def __init__(self, weight: torch.Tensor, slices: int, rank: int, scaling: float):
        super().__init__()
        rows, cols = weight.shape[0] // slices, weight.shape[1]
        self.branches = nn.ModuleList(LowRank(cols, rows, rank, weight) for _ in range(slices))
        self.scaling = scaling

    def forward(self, weight):
        delta = torch.cat([b.delta_weight() for b in self.branches], dim=0)
        return weight + self.scaling * delta.to(weight.dtype)


class LoraClip(WeightSpaceHandle):
    name = "lora-clip"
    families = ("clip",)
    Config = LoraClipConfig
    summary = "Low-rank updates (r=8) of q, k, v, o in every attention block of both CLIP towers."
    memory = MemoryProfile("attention", rebuilt="attention")
    baseline_for = ("clip",)

    def _register_parametrizations(self) -> None:
        cfg = self.config
        scaling = cfg.alpha / cfg.rank
        for _, _, attn in attention_targets(self.model):
            for module, name, slices in ((attn, "in_proj_weight", 3), (attn.out_proj, "weight", 1)):
                p = self.weights.register(module, name, LowRankDelta(getattr(module, name), slices, cfg.rank, scaling))
                for param in p.parameters():
                    self._add_adapter_param(param)
