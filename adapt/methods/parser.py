"""PARSER: parameter space reconstruction (SAM-PARSER, AAAI'24, arXiv 2308.14604).

Each adapted weight W (out x in; a conv kernel is read as out x in*k*k) is decomposed once,
W = U diag(s) V^T, with U and V frozen; the trainable parameters are the r = min(out, in)
coefficients sigma, initialised to s, and the adapted weight is W'(sigma) = U diag(sigma) V^T.

Implementation notes (why it looks the way it does):
- W' is computed as W + U diag(sigma - s) V^T, which equals U diag(sigma) V^T exactly in real
  arithmetic but is bit-identical to W at initialisation (the SVD's own round-off never enters the
  step-0 output), so identity at step 0 is exact rather than ~1e-6.
- The SVD is taken in float64 and stored in float32; the reconstruction runs in float32 even under
  autocast, then is cast to the weight's dtype. The factors and coefficients stay float32 when the
  model is cast to bf16 or fp16 (Float32Module).
- Forward: the weight is rebuilt once per access (a parametrization), not applied as
  x -> (x V) * sigma -> U. Rebuilding costs out*in*r multiply-adds per layer and step, the
  factored form costs tokens*r*(in+out); SAM's encoder sees 4096 tokens per image at 1024 px, so
  rebuilding is cheaper whenever tokens > out*in/(in+out) (~384 for a 768x768 layer), i.e. always
  for SAM. It also lets segment-anything's own forward run untouched.
- Scope "default" adapts every Linear of the encoder blocks (qkv, proj, mlp.lin1, mlp.lin2) plus
  patch_embed and both neck convs (38,144 coefficients on ViT-B, as the paper reports); "conv" is the
  official demo's conv-only scope (patch_embed + neck, 1,280 on ViT-B). On SAM 2's Hiera the same
  reading ("every encoder weight"): each block's qkv, proj and two MLP linears, the widening
  shortcut of a stage's first block, the patch embedding and the FPN neck's lateral convs; "conv"
  is the patch embedding and those convs (the backbone's layout() says where each sits). The mask
  decoder is trained in full and the prompt encoder stays frozen, as in the paper.
- `reparam="delta"` trains delta with sigma = s * (1 + delta), delta = 0 at init, so that one
  learning rate fits coefficients of very different magnitudes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from adapt.backbones.base import EncoderLayout
from adapt.methods.base import Float32Module, MemoryProfile, MethodConfig, Variant, WeightSpaceHandle


@dataclass
class ParserConfig(MethodConfig):
    scope: str = "default"  # "default" | "conv"
    reparam: str = "sigma"  # "sigma" | "delta"


class SpectralCoefficients(Float32Module):
    """The parametrization: returns W + U diag(sigma - s) V^T, reshaped to W's own shape."""

    def __init__(self, weight: torch.Tensor, reparam: str = "sigma"):
        super().__init__()
        shape = weight.shape
        flat = weight.detach().reshape(shape[0], -1).double()
        if flat.is_meta:  # shape-only builds (parameter counting) skip the decomposition
            r = min(flat.shape)
            u, s, vh = flat.new_empty(shape[0], r), flat.new_empty(r), flat.new_empty(r, flat.shape[1])
        else:
            u, s, vh = torch.linalg.svd(flat, full_matrices=False)
        self.reparam = reparam
        self.register_buffer("U", u.float(), persistent=False)
        self.register_buffer("Vh", vh.float(), persistent=False)
        self.register_buffer("s", s.float(), persistent=False)
        init = s.float() if reparam == "sigma" else torch.zeros_like(s, dtype=torch.float32)
        self.coef = nn.Parameter(init.clone())

    def sigma(self) -> torch.Tensor:
        return self.coef if self.reparam == "sigma" else self.s * (1 + self.coef)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=weight.device.type, enabled=False):
            delta = (self.U * (self.sigma() - self.s)) @ self.Vh
            return (weight.float() + delta.reshape(weight.shape)).to(weight.dtype)


def target_paths(layout: EncoderLayout, scope: str) -> list[str]:
    """Paths (relative to the model) of the modules whose weight PARSER adapts."""
    if scope == "conv":
        return [*layout.stem, *layout.neck]
    if scope != "default":
        raise ValueError(f"PARSER scope must be 'default' or 'conv', not {scope!r}")
    blocks = (p for block in layout.blocks for p in block.linears())
    return [*layout.stem, *layout.others, *blocks, *layout.neck]


class Parser(WeightSpaceHandle):
    name = "parser"
    families = ("sam",)
    Config = ParserConfig
    summary = "SVD coefficients of every encoder weight (U, V frozen); about 38K parameters on ViT-B."
    memory = MemoryProfile("all", rebuilt=1.0)  # every encoder weight is rebuilt from its SVD each forward
    variants = (
        Variant({"scope": "conv"}, "the official demo's scope: patch embedding and neck convolutions only"),
        Variant(
            {"reparam": "delta"},
            "sigma = s (1 + delta), delta = 0 at init: one learning rate for coefficients of any magnitude",
            compare=False,
        ),
    )

    def _register_parametrizations(self) -> None:
        if self.config.reparam not in ("sigma", "delta"):
            raise ValueError(f"PARSER reparam must be 'sigma' or 'delta', not {self.config.reparam!r}")
        for path in target_paths(self.backbone.layout(), self.config.scope):
            module = self.model.get_submodule(path)
            p = self.weights.register(module, "weight", SpectralCoefficients(module.weight, self.config.reparam))
            self._add_adapter_param(p.coef, coefficient=True)
