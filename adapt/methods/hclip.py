"""H-CLIP: symmetric PEFT in hyperspherical space for both CLIP towers (CVPR'25, arXiv 2405.18840).

Targets: in every residual attention block of the image and the text tower, W_q, W_k, W_v (the
thirds of attn.in_proj_weight) and W_o (attn.out_proj.weight); MLPs and biases untouched.
Each target gets a block-diagonal transform R = diag(R_1..R_b), block size q (default 128), applied
on the input side, W' = W R. Input-side keeps the hyperspherical energy of the neurons (rows of W),
HE(W) = sum_{i != j} 1 / || w_i/|w_i| - w_j/|w_j| ||, unchanged whenever R is orthogonal.

- Orthogonal blocks (the text tower by default): R_i = Cayley(Q_i) = (I - Q)(I + Q)^{-1},
  Q = (P - P^T)/2, P = 0 at init -> R = I. HE is preserved exactly; there is no HE loss.
- Free blocks (the image tower by default): R_i = I + D_i, D_i = 0 at init.
- DCRC (dual cross-relation communication): every block's generator (P, or D) is stacked into one
  tensor T of shape (4L, b_text + b_image, q, q) (the spec's q x q x (b_t + b_i) x 4L, axes
  reordered); f3 mixes it across the block/modality axis and f4 across the layer/matrix axis
  (identity-initialised linear maps, no bias), and each block uses
  T + alpha * f4(f3(T)), alpha a learnable scalar, init 0, before the Cayley map for orthogonal
  blocks. Identity at step 0 follows from alpha = 0 and zero generators.

Where we depart from the letter of the spec, and why: the spec stacks R itself for free blocks.
We stack their displacement D = R - I, so that T holds only "changes" from both modalities; with R
in T, f4(f3(I)) = I at init and alpha would start by scaling every image weight by (1 + alpha)
instead of exchanging what the blocks have learned. Towers of different depth (ViT-L/14: 24 image,
12 text layers) are zero-padded on the layer axis; padded entries are constants, not parameters.

Numerics: transforms, the Cayley solve and DCRC run in float32 whatever the model dtype (the
parameters stay float32 when the model is cast: Float32Module). All R are computed once per model
forward: a cache keyed by the parameters' versions and grad mode, shared by the two towers of one
forward and renewed when a tower starts its next forward (a pre-hook on each transformer, which
also computes them there, outside the blocks, so activation checkpointing recomputes blocks
exactly), so the 4 targets x L layers x 2 towers do not recompute the DCRC mixing each, and every
forward has an autograd graph of its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from adapt.backbones.clip import attention_targets
from adapt.methods.base import Float32Module, MemoryProfile, MethodConfig, Variant, WeightSpaceHandle

log = logging.getLogger(__name__)


@dataclass
class HclipConfig(MethodConfig):
    block_size: int = 128
    dcrc: bool = True
    orthogonal: str = "text"  # "text" (paper) | "both" | "none"
    coefficient_lr_scale: float = 1.0  # every H-CLIP parameter is coefficient-like already


def cayley(generator: torch.Tensor) -> torch.Tensor:
    """(I - Q)(I + Q)^{-1} with Q the skew part of `generator` (batched over leading dims)."""
    q = 0.5 * (generator - generator.transpose(-1, -2))
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device).expand_as(q)
    # (I + Q)^{-1} (I - Q) equals (I - Q)(I + Q)^{-1}: both are rational functions of Q.
    return torch.linalg.solve(eye + q, eye - q)


class HypersphericalTransforms(Float32Module):
    """All block-diagonal transforms of both towers, with DCRC, computed together."""

    def __init__(self, widths: dict, depths: dict, block_size: int, dcrc: bool, orthogonal: str, device=None):
        super().__init__()
        if orthogonal not in ("text", "both", "none"):
            raise ValueError(f"hclip orthogonal must be 'text', 'both' or 'none', not {orthogonal!r}")
        for tower, w in widths.items():
            if w % block_size:
                raise ValueError(f"hclip block size {block_size} does not divide the {tower} width {w}")
        self.towers = ("text", "image")
        self.q = block_size
        self.blocks = {t: widths[t] // block_size for t in self.towers}
        self.depths = dict(depths)
        self.orthogonal = {"text": orthogonal in ("text", "both"), "image": orthogonal == "both"}
        kw = dict(device=device, dtype=torch.float32)
        self.generators = nn.ParameterDict(
            {
                t: nn.Parameter(torch.zeros(4 * depths[t], self.blocks[t], block_size, block_size, **kw))
                for t in self.towers
            }
        )
        self.dcrc = dcrc
        if dcrc:
            n_blocks = sum(self.blocks.values())
            n_layers = 4 * max(depths.values())
            self.f3 = nn.Parameter(torch.eye(n_blocks, **kw))  # across blocks and modalities
            self.f4 = nn.Parameter(torch.eye(n_layers, **kw))  # across layers and matrices
            self.alpha = nn.Parameter(torch.zeros((), **kw))
        self._cache = None
        self._cache_key = None
        self._served: set[str] = set()

    def _mixed(self) -> dict:
        if not self.dcrc:
            return {t: self.generators[t] for t in self.towers}
        n_layers = self.f4.shape[0]
        padded = [
            nn.functional.pad(self.generators[t], (0, 0, 0, 0, 0, 0, 0, n_layers - 4 * self.depths[t]))
            for t in self.towers
        ]
        stacked = torch.cat(padded, dim=1)  # (4L, b_text + b_image, q, q)
        mixed = stacked + self.alpha * torch.einsum("ml,cb,lbij->mcij", self.f4, self.f3, stacked)
        out, start = {}, 0
        for t in self.towers:
            out[t] = mixed[: 4 * self.depths[t], start : start + self.blocks[t]]
            start += self.blocks[t]
        return out

    def _compute(self) -> dict:
        transforms = {}
        for t, gen in self._mixed().items():
            if self.orthogonal[t]:
                transforms[t] = cayley(gen)
            else:
                transforms[t] = gen + torch.eye(self.q, dtype=gen.dtype, device=gen.device)
        return transforms

    def transforms(self, tower: str | None = None):
        """(4L, b, q, q) float32 transforms of one tower ({tower: transforms} with none named),
        from the cache while it is valid."""
        grad = torch.is_grad_enabled()
        key = (grad, tuple(p._version for p in self.parameters()), tuple(p.device for p in self.parameters())[:1])
        if self._cache is None or self._cache_key != key:
            with torch.autocast(device_type=self.generators["text"].device.type, enabled=False):
                self._cache = self._compute()
            self._cache_key, self._served = key, set()
        if tower is None:
            return dict(self._cache)
        self._served.add(tower)
        return self._cache[tower]

    def starting(self, tower: str) -> None:
        """A tower's forward begins (a pre-hook on its transformer). The cache is shared by the two
        towers of one model forward; a tower that already used it starts a new forward, which gets
        transforms (and an autograd graph) of its own: two forwards then two backwards work, and
        edits made through .data between forwards are seen."""
        if tower in self._served:
            self.forget()
        if torch.is_grad_enabled():
            # computed here, outside the tower's blocks: under activation checkpointing a block's
            # recomputation must save what its first run saved, so the shared transforms may not be
            # first computed inside one block (and only served from the cache in its recomputation)
            self.transforms()

    def forget(self) -> None:
        self._cache = None


def block_transform(weight: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """W R for W (out x in) and R = blockdiag(rotations) with rotations (b, q, q)."""
    b, q, _ = rotations.shape
    w = weight.float().reshape(weight.shape[0], b, q)
    return torch.einsum("obi,bij->obj", w, rotations).reshape(weight.shape).to(weight.dtype)


class InProjTransform(nn.Module):
    """Parametrization of attn.in_proj_weight: [W_q R_q; W_k R_k; W_v R_v]."""

    def __init__(self, hub: HypersphericalTransforms, tower: str, layer: int):
        super().__init__()
        self._hub, self.tower, self.layer = [hub], tower, layer

    def forward(self, weight):
        rot = self._hub[0].transforms(self.tower)[4 * self.layer : 4 * self.layer + 3]
        with torch.autocast(device_type=weight.device.type, enabled=False):
            return torch.cat([block_transform(w, r) for w, r in zip(weight.chunk(3, dim=0), rot)], dim=0)


class OutProjTransform(InProjTransform):
    """Parametrization of attn.out_proj.weight: W_o R_o."""

    def forward(self, weight):
        rot = self._hub[0].transforms(self.tower)[4 * self.layer + 3]
        with torch.autocast(device_type=weight.device.type, enabled=False):
            return block_transform(weight, rot)


class Hclip(WeightSpaceHandle):
    name = "hclip"
    families = ("clip",)
    Config = HclipConfig
    summary = "Block-orthogonal (text) and free (image) input-side transforms of q,k,v,o in both towers, with DCRC."
    # the stacked generators, their DCRC mixing and the transforms: about three fp32 copies of the generators
    memory = MemoryProfile("attention", rebuilt="attention", transform_copies=3)
    baseline_for = ("clip",)
    variants = (
        Variant({"dcrc": False}, "the paper's ablation without dual cross-relation communication"),
        Variant({"orthogonal": "both"}, "orthogonal transforms in the image tower too (the paper's ablation)"),
        Variant({"orthogonal": "none"}, "free transforms in both towers (no energy is preserved)", compare=False),
    )

    def check_snapshot(self) -> dict:
        image = self.model.visual.transformer.resblocks[0].attn.in_proj_weight.detach().clone()
        return {"he": {k: hyperspherical_energy(w) for k, w in text_tower_weights(self.model).items()}, "image": image}

    def check_report(self, snapshot: dict) -> tuple[dict, bool]:
        """An orthogonal tower keeps its hyperspherical energy (checked on the text tower, where the
        paper puts them); a free one must move (checked on the image tower)."""
        he = {k: hyperspherical_energy(w) for k, w in text_tower_weights(self.model).items()}
        before = snapshot["he"]
        image = self.model.visual.transformer.resblocks[0].attn.in_proj_weight.detach()
        report = {
            "text_he_max_rel_change": max(abs(he[k] - before[k]) / before[k] for k in before),
            "image_weight_rel_change": ((image - snapshot["image"]).norm() / snapshot["image"].norm()).item(),
        }
        ok = True
        if self.config.orthogonal in ("text", "both"):
            ok = ok and report["text_he_max_rel_change"] <= 1e-4
        if self.config.orthogonal in ("text", "none"):
            ok = ok and report["image_weight_rel_change"] > 0
        return report, ok

    def _register_parametrizations(self) -> None:
        cfg, clip = self.config, self.model
        widths = {"text": clip.transformer.width, "image": clip.visual.transformer.width}
        depths = {"text": len(clip.transformer.resblocks), "image": len(clip.visual.transformer.resblocks)}
        q = min(cfg.block_size, *widths.values())
        if q != cfg.block_size:  # tiny towers: the block is the whole width; the adapter records it
            log.info("hclip: block size %d is wider than a tower (%s); using %d", cfg.block_size, widths, q)
            cfg.block_size = q
        hub = HypersphericalTransforms(
            widths, depths, q, cfg.dcrc, cfg.orthogonal, device=clip.visual.conv1.weight.device
        )
        clip.add_module("hclip", hub)
        for p in hub.parameters():
            self._add_adapter_param(p, coefficient=True)
        for tower, layer, attn in attention_targets(clip):
            self.weights.register(attn, "in_proj_weight", InProjTransform(hub, tower, layer))
            self.weights.register(attn.out_proj, "weight", OutProjTransform(hub, tower, layer))
        self._hub = hub
        self._hooks = [
            transformer.register_forward_pre_hook(lambda *_, t=tower: hub.starting(t))
            for tower, transformer in (("text", clip.transformer), ("image", clip.visual.transformer))
        ]

    def _merge(self) -> None:
        self._hub.forget()  # values computed now, from the parameters as they are
        super()._merge()
        del self.model.hclip

    def _unmerge(self) -> None:
        self.model.add_module("hclip", self._hub)
        super()._unmerge()

    def _detach(self) -> None:
        super()._detach()
        for hook in self._hooks:
            hook.remove()
        del self.model.hclip

    def count(self) -> dict:
        """Adds `adapter_effective`: degrees of freedom, counting a Cayley block's q(q-1)/2."""
        counts = super().count()
        hub = self._hub
        effective = counts["adapter"]
        q = hub.q
        for t in hub.towers:
            if hub.orthogonal[t]:
                effective -= hub.generators[t].numel() - hub.generators[t][..., 0, 0].numel() * q * (q - 1) // 2
        counts["adapter_effective"] = effective
        return counts


def hyperspherical_energy(weight: torch.Tensor, eps: float = 1e-12) -> float:
    """HE(W) = sum_{i != j} 1 / || w_i/|w_i| - w_j/|w_j| || over the rows (neurons) of W, in float64."""
    w = weight.detach().double()
    w = w / w.norm(dim=1, keepdim=True).clamp_min(eps)
    dist = torch.cdist(w, w)
    off = ~torch.eye(w.shape[0], dtype=torch.bool, device=w.device)
    return (1.0 / dist[off].clamp_min(eps)).sum().item()


def text_tower_weights(clip) -> dict[str, torch.Tensor]:
    """The adapted text-tower targets (W_q, W_k, W_v, W_o of every layer), as the model sees them now."""
    out = {}
    for tower, layer, attn in attention_targets(clip):
        if tower != "text":
            continue
        for name, w in zip("qkv", attn.in_proj_weight.chunk(3, dim=0)):
            out[f"text.{layer}.{name}"] = w
        out[f"text.{layer}.o"] = attn.out_proj.weight
    return out
