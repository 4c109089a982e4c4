"""Exact fused attention for segment-anything's ViT image encoder (every SAM ViT backbone).

segment-anything's `Attention` computes, per head, softmax(scale q k^T + B) v with an explicit
N x N matrix, where B is the decomposed relative position (add_decomposed_rel_pos):

    B[i, j] = rel_h[i, row(j)] + rel_w[i, col(j)],
    rel_h = q_i . Rh[row(i), row(j)],  rel_w = q_i . Rw[col(i), col(j)]   (q unscaled, as upstream)

B is a sum of a term in (query, key's row) and one in (query, key's column), so it folds into the
dot product exactly: with q' = [scale q, rel_h(q), rel_w(q)] and k' = [k, onehot(row(k)),
onehot(col(k))], q' . k' = scale q.k + B. `scaled_dot_product_attention(q', k', v', scale=1)` then
runs with no mask, so PyTorch picks a flash-class kernel and keeps no N x N matrix for backward.
PyTorch's CPU flash kernel (torch 2.14) needs q, k and v of one width, so v is padded with zeros
to q's width (C + H + W) and the output sliced back to C.

Which blocks run it: `FusedAttention` replaces the class of each encoder block's `Attention`
(`set_attention`), so parameter names (qkv, proj, rel_pos_h, rel_pos_w), state dicts, the methods
that wrap or reparametrize attn.qkv / attn.proj (LoRA, PARSER, COBOT) and the official-format
export are unchanged; "eager" puts segment-anything's own class back (the reference). ONNX
export takes the fused form as it is: torch.onnx (dynamo, opset 18) exports
scaled_dot_product_attention, and the graphs match the PyTorch model as before
(tests/test_onnx_folders.py).
Global-attention blocks always take the fused form. Windowed blocks (14 x 14 windows on SAM ViT
at 1024 px) keep the eager form under "fused" (WINDOWED_FUSED), by measurement: one random-init
sam-vit-b block at 1024 px, batch 1, forward + backward, one thread, each form in a fresh process
(`python bench/fused_attention.py`, docs/benchmarks.md), two runs on this shared 2-core CPU:

    global block (64 x 64 tokens):       time fused/eager 0.99x and 1.35x, peak memory 0.15x (355 / 2,394 MiB)
    windowed block (25 windows 14 x 14): time fused/eager 0.97x and 1.02x, peak memory 0.98x

The windowed blocks' matrices are small (196 x 196): the fused form saves nothing there, so they
keep the reference. In the global blocks the N x N matrix goes (memory 0.15x) but time does not
improve on this CPU: the flash kernel works at width C + H + W = 192 instead of 64 (q . k over the
one-hot columns, and v padded to that width), three times eager's matrix products, which costs
what eager's passes over the N x N matrix cost. A cheaper form (key blocks by row, merged by
log-sum-exp) is left for later.

Other encoders, checked and left as they are: SAM 2's Hiera already calls
scaled_dot_product_attention (no relative-position bias); MobileSAM's TinyViT attention (tinyvit.py) adds a
learned per-head bias table indexed by token-pair offset (attention_biases[:, attention_bias_idxs])
to q k^T: a general N x N bias of small 7 x 7 / 14 x 14 windows, which does not decompose into a
query term plus a key term, so the fused form does not apply; CLIP (open_clip) runs
nn.MultiheadAttention, which already dispatches to fused kernels where it can.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, Block, get_rel_pos

ATTENTION_MODES = ("fused", "eager")
WINDOWED_FUSED = False  # windowed blocks under "fused": eager is as fast at 14 x 14 (see above)


def _indicators(h: int, w: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot rows (N, h) and columns (N, w) of the N = h * w tokens, row-major."""
    rows = torch.eye(h, dtype=like.dtype, device=like.device).repeat_interleave(w, dim=0)
    cols = torch.eye(w, dtype=like.dtype, device=like.device).repeat(h, 1)
    return rows, cols


def fused_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """segment-anything's Attention.forward on x (B, H, W, dim), computed with
    scaled_dot_product_attention: the same result (fp32: within 1e-5) without an N x N matrix."""
    b, h, w, _ = x.shape
    n, heads = h * w, attn.num_heads
    qkv = attn.qkv(x).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)  # (3, B, heads, N, C)
    q, k, v = qkv.unbind(0)
    c = q.shape[-1]
    if not attn.use_rel_pos:
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    else:
        rh = get_rel_pos(h, h, attn.rel_pos_h)  # (h, h, C)
        rw = get_rel_pos(w, w, attn.rel_pos_w)  # (w, w, C)
        grid = q.reshape(b, heads, h, w, c)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid, rh).reshape(b, heads, n, h)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid, rw).reshape(b, heads, n, w)
        rows, cols = _indicators(h, w, k)
        q = torch.cat([q * attn.scale, rel_h, rel_w], dim=-1)
        k = torch.cat([k, rows.expand(b, heads, n, h), cols.expand(b, heads, n, w)], dim=-1)
        v = F.pad(v, (0, h + w))  # the CPU flash kernel takes one width for q, k and v
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0)[..., :c]
    return attn.proj(out.transpose(1, 2).reshape(b, h, w, heads * c))


class FusedAttention(Attention):
    """segment-anything's Attention (same parameters, same state dict) computed by fused_attention."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_attention(self, x)


def set_attention(encoder: torch.nn.Module, mode: str, windowed: bool | None = None) -> int:
    """Switch every block of a segment-anything ImageEncoderViT (or any module holding such
    blocks) to `mode`: "fused" (global blocks fused; windowed ones too when `windowed`, by default
    WINDOWED_FUSED) or "eager" (segment-anything's own Attention). Only the attention modules'
    class changes: parameters, wrappers and parametrizations stay. Returns the blocks fused."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_MODES)}, not {mode!r}")
    windowed = WINDOWED_FUSED if windowed is None else windowed
    fused = 0
    for block in encoder.modules():
        if not isinstance(block, Block) or not isinstance(block.attn, Attention):
            continue
        use = mode == "fused" and (block.window_size == 0 or windowed)
        block.attn.__class__ = FusedAttention if use else Attention
        fused += use
    return fused


def attention_mode(encoder: torch.nn.Module) -> str:
    """ "fused" when any block of the encoder runs the fused form, else "eager"."""
    return "fused" if any(isinstance(m, FusedAttention) for m in encoder.modules()) else "eager"
