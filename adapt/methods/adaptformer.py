"""AdaptFormer on SAM's (and SAM 2's Hiera) image encoder: a parallel bottleneck beside every
block's MLP (on Hiera, at the width of the block's stage).

    out = mlp(norm2(x)) + s * up(drop(relu(down(LN(x)))))

with the adapter's own LayerNorm on the block's residual stream x (AdaptFormer's "in" option, which
the 322,752 ViT-B count implies: LN 1,536 + down 12,304 + up 13,056 per block), bottleneck V=16,
down kaiming-uniform, up zero-initialised (identity at step 0), s = 0.1 as in AdaptFormer.
To feed the adapter the un-normalised x, the block's norm2 moves inside the wrapper (norm2 becomes
Identity in the block while attached). The bottleneck h = down(LN(x)) is exposed to an optional
mixer (COBOT) as slice t = layer.

Merge: the branch is non-linear (LayerNorm, ReLU), so it cannot be folded into SAM's weights; merge
folds what is linear (a mixer's map, into `down`) and leaves a plain AdaptFormer of standard
Linear/LayerNorm modules.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from adapt.methods.base import MemoryProfile, MethodConfig, SwapHandle


@dataclass
class AdaptFormerConfig(MethodConfig):
    bottleneck: int = 16
    scale: float = 0.1
    dropout: float = 0.0


class AdaptFormerMLP(nn.Module):
    def __init__(
        self,
        norm: nn.Module,
        mlp: nn.Module,
        dim: int,
        bottleneck: int,
        scale: float,
        dropout: float,
        mixer=None,
        slice_t: int = 0,
        like: torch.Tensor | None = None,
    ):
        super().__init__()
        kw = dict(device=like.device, dtype=like.dtype) if like is not None else {}
        self.norm, self.mlp = norm, mlp
        self.ln = nn.LayerNorm(dim, **kw)
        self.down = nn.Linear(dim, bottleneck, **kw)
        self.up = nn.Linear(bottleneck, dim, **kw)
        self.drop = nn.Dropout(dropout)
        self.scale, self.slice_t = scale, slice_t
        self._mixer = [mixer]
        if like is None or not like.is_meta:
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x):
        h = self.down(self.ln(x))
        mixer = self._mixer[0]
        if mixer is not None:
            h = mixer(h, self.slice_t)
        return self.mlp(self.norm(x)) + self.scale * self.up(self.drop(torch.relu(h)))

    @torch.no_grad()
    def merged_module(self) -> AdaptFormerMLP:
        mixer = self._mixer[0]
        plain = copy.copy(self)  # shallow: shares norm, mlp, ln and up with the wrapper
        plain._modules = dict(self._modules)
        plain._mixer = [None]
        if mixer is not None:
            m = mixer.matrix(self.slice_t).to(self.down.weight.dtype)
            down = nn.Linear(
                self.down.in_features,
                self.down.out_features,
                device=self.down.weight.device,
                dtype=self.down.weight.dtype,
            )
            down.weight.copy_(m @ self.down.weight)
            down.bias.copy_(m @ self.down.bias)
            plain._modules["down"] = down.requires_grad_(False)
        return plain


class AdaptFormer(SwapHandle):
    name = "adaptformer"
    families = ("sam",)
    Config = AdaptFormerConfig
    summary = "A bottleneck MLP (V=16) beside every encoder MLP; about 323K parameters on ViT-B."
    memory = MemoryProfile("adapter")
    fully_mergeable = False

    def _make_mixer(self, depth: int, width: int):
        return None

    def _wrap_modules(self) -> None:
        cfg = self.config
        blocks = self.backbone.layout().blocks
        mixer = self._make_mixer(len(blocks), cfg.bottleneck)
        for i, block in enumerate(blocks):
            like = self.model.get_submodule(f"{block.path}.{block.mlp_linears[0]}").weight
            norm = nn.Identity()  # an MLP that normalises its own input keeps doing so
            if block.norm2 is not None:
                norm = self.model.get_submodule(f"{block.path}.{block.norm2}")
                self.swaps.wrap(f"{block.path}.{block.norm2}", lambda m: nn.Identity())
            w = self.swaps.wrap(
                f"{block.path}.{block.mlp}",
                lambda m, i=i, norm=norm, like=like, width=block.width: AdaptFormerMLP(
                    norm, m, width, cfg.bottleneck, cfg.scale, cfg.dropout, mixer, i, like
                ),
            )
            for p in (*w.ln.parameters(), *w.down.parameters(), *w.up.parameters()):
                self._add_adapter_param(p)
