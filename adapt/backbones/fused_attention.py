"""Exact fused attention for segment-anything's ViT image encoder (every SAM ViT backbone).

segment-anything's `Attention` computes, per head, softmax(scale q k^T + B) v with an explicit
N x N matrix, where B is the decomposed relative position (add_decomposed_rel_pos):

    B[i, j] = rel_h[i, row(j)] + rel_w[i, col(j)],
    rel_h = q_i . Rh[row(i), row(j)],  rel_w = q_i . Rw[col(i), col(j)]   (q unscaled, as upstream)

and autograd keeps that matrix (12 x 4096 x 4096 values per image in a ViT-B global block at
1024 px, about 805 MB) for backward. Two exact forms keep none:

- "folded" (accelerators, and any traced model: ONNX export, torch.compile): B is a sum of a term
  in (query, key's row) and one in (query, key's column), so it folds into the dot product: with
  q' = [scale q, rel_h(q), rel_w(q)] and k' = [k, onehot(row(k)), onehot(col(k))], q' . k' =
  scale q.k + B, and one `scaled_dot_product_attention(q', k', v', scale=1)` call runs with no
  mask, so PyTorch picks a flash-class kernel (SAM 3's vitdet.py folds its bias alike). Flash
  kernels take one width for q, k and v, so v is padded to C + h + w and the output sliced back.
  torch.onnx (dynamo, opset 18) exports it as it is (tests/test_onnx_folders.py).
- "blockwise" (the CPU): a block of queries at a time, softmax and the output from scale q k^T
  plus B's two terms broadcast into the block's scores, one buffer reused by every block, and a
  backward pass that recomputes each block's scores from q, k and the per-query log-sum-exp
  (`_Blockwise`). Its matrix products stay at the head width C = 64; the folded form's run at
  C + h + w = 192, three times eager's products, which on this CPU costs what it saves (measured
  1.0x-1.35x eager on a global block), while the blockwise form is 0.72x eager on a global
  block's attention and 0.9x on a windowed one's (forward + backward, one thread; forward alone
  0.45x and 0.65x).

`fused_form` says which form a block runs on which device; the planner asks it too
(adapt.backbones.sam's memory_blocks: what each form keeps instead of the matrix).
`FusedAttention` replaces the class of each encoder block's `Attention` (`set_attention`), so
parameter names (qkv, proj, rel_pos_h, rel_pos_w), state dicts, the methods that wrap or
reparametrize attn.qkv / attn.proj (LoRA, PARSER, COBOT) and the official-format export are
unchanged; "eager" puts segment-anything's own class back (the reference). Whole-step figures
(sam-vit-b LoRA and PARSER, peft's LoRA, an uncached click): bench/fast_path.py, docs/benchmarks.md.

Other encoders, checked and left as they are: SAM 2's Hiera already calls
scaled_dot_product_attention (no relative-position bias); MobileSAM's TinyViT attention (tinyvit.py) adds a
learned per-head bias table indexed by token-pair offset (attention_biases[:, attention_bias_idxs])
to q k^T: a general N x N bias of small 7 x 7 / 14 x 14 windows, which does not decompose into a
query term plus a key term, so neither form applies; CLIP (open_clip) runs
nn.MultiheadAttention, which already dispatches to fused kernels where it can.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, Block, get_rel_pos

ATTENTION_MODES = ("fused", "eager")
WINDOWED_ON_CPU = True  # windowed blocks on the CPU run the blockwise form too (0.9x eager, see above)
CHUNK_SCORES = 1 << 22  # scores per query block of the blockwise form (16 MiB in fp32)


def _indicators(h: int, w: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot rows (N, h) and columns (N, w) of the N = h * w tokens, row-major."""
    rows = torch.eye(h, dtype=like.dtype, device=like.device).repeat_interleave(w, dim=0)
    cols = torch.eye(w, dtype=like.dtype, device=like.device).repeat(h, 1)
    return rows, cols


def _folded(q, k, v, rel_h, rel_w, scale: float) -> torch.Tensor:
    """softmax(scale q k^T + B) v by one scaled_dot_product_attention call: B folded into q and k
    (rel_h, rel_w on q's side, one-hot key rows and columns on k's); v padded to their width."""
    b, heads, n, c = q.shape
    h, w = rel_h.shape[-1], rel_w.shape[-1]
    rows, cols = _indicators(h, w, k)
    q = torch.cat([q * scale, rel_h, rel_w], dim=-1)
    k = torch.cat([k, rows.expand(b, heads, n, h), cols.expand(b, heads, n, w)], dim=-1)
    v = F.pad(v, (0, h + w))  # flash kernels take one width for q, k and v
    return F.scaled_dot_product_attention(q, k, v, scale=1.0)[..., :c]


def query_chunk(batch_heads: int, n: int) -> int:
    """Queries per block of the blockwise form: about CHUNK_SCORES scores (N x chunk x heads x batch)
    at a time, a power of two between 16 and N."""
    chunk = 16
    while chunk * 2 * n * batch_heads <= CHUNK_SCORES and chunk * 2 <= n:
        chunk *= 2
    return min(chunk, n)


def _scores(qs, kt, rel_h, rel_w, lo: int, hi: int, buffer: torch.Tensor) -> torch.Tensor:
    """scale q k^T + B for queries lo:hi, in `buffer` (batch x heads, chunk, N): q already scaled,
    every tensor flattened over (batch, heads)."""
    s = buffer[:, : hi - lo]
    torch.bmm(qs[:, lo:hi], kt, out=s)
    grid = s.view(s.shape[0], hi - lo, rel_h.shape[-1], rel_w.shape[-1])
    grid.add_(rel_h[:, lo:hi, :, None]).add_(rel_w[:, lo:hi, None, :])
    return s


class _Blockwise(torch.autograd.Function):
    """softmax(scale q k^T + B) v with B[i, j] = rel_h[i, row(j)] + rel_w[i, col(j)], a block of
    queries at a time: each block's scores live only while it is computed (in one buffer reused by
    every block), the backward pass recomputes them from q, k and the per-query log-sum-exp (Rabe &
    Staats 2021, FlashAttention's recomputation), and B's gradients are the row and column sums of
    the scores' gradient. The matrix products stay at the head width C (FlashAttention's count: 7
    products of N x N x C per head, against eager's 6), cheaper than the folded form's C + h + w.
    Inputs (batch, heads, N, .); computed flattened over (batch, heads)."""

    @staticmethod
    def forward(ctx, q, k, v, rel_h, rel_w, scale: float):
        b, heads, n, c = q.shape
        flat = [t.reshape(b * heads, n, t.shape[-1]) for t in (q * scale, k, v, rel_h, rel_w)]
        qs, k, v, rel_h, rel_w = flat
        chunk = query_chunk(b * heads, n)
        buffer = q.new_empty(b * heads, chunk, n)
        out, lse = torch.empty_like(v), q.new_empty(b * heads, n, 1)
        kt = k.transpose(1, 2)
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            s = _scores(qs, kt, rel_h, rel_w, lo, hi, buffer)
            top = s.amax(-1, keepdim=True)
            p = s.sub_(top).exp_()
            total = p.sum(-1, keepdim=True)
            torch.bmm(p, v, out=out[:, lo:hi]).div_(total)
            torch.add(top, total.log_(), out=lse[:, lo:hi])
        ctx.save_for_backward(qs, k, v, rel_h, rel_w, out, lse)
        ctx.scale, ctx.chunk, ctx.shape = scale, chunk, (b, heads)
        return out.view(b, heads, n, c)

    @staticmethod
    def backward(ctx, grad_out):
        qs, k, v, rel_h, rel_w, out, lse = ctx.saved_tensors
        scale, chunk, n = ctx.scale, ctx.chunk, qs.shape[1]
        grad = grad_out.reshape(out.shape)
        dq, dk, dv = torch.empty_like(qs), torch.zeros_like(k), torch.zeros_like(v)
        d_rel_h, d_rel_w = torch.empty_like(rel_h), torch.empty_like(rel_w)
        delta = (grad * out).sum(-1, keepdim=True)
        kt, vt = k.transpose(1, 2), v.transpose(1, 2)
        scores, ds_buffer = qs.new_empty(qs.shape[0], chunk, n), qs.new_empty(qs.shape[0], chunk, n)
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            p = _scores(qs, kt, rel_h, rel_w, lo, hi, scores).sub_(lse[:, lo:hi]).exp_()
            g = grad[:, lo:hi]
            dv.baddbmm_(p.transpose(1, 2), g)
            ds = torch.bmm(g, vt, out=ds_buffer[:, : hi - lo]).sub_(delta[:, lo:hi]).mul_(p)  # the scores' gradient
            grid = ds.view(ds.shape[0], hi - lo, rel_h.shape[-1], rel_w.shape[-1])
            torch.sum(grid, -1, out=d_rel_h[:, lo:hi])
            torch.sum(grid, -2, out=d_rel_w[:, lo:hi])
            torch.bmm(ds, k, out=dq[:, lo:hi])
            dk.baddbmm_(ds.transpose(1, 2), qs[:, lo:hi])
        b, heads = ctx.shape
        shaped = [t.view(b, heads, n, t.shape[-1]) for t in (dq.mul_(scale), dk, dv, d_rel_h, d_rel_w)]
        return (*shaped, None)


def fused_form(attention: str, device: str, windowed: bool, windowed_on_cpu: bool | None = None) -> str:
    """The form a block's attention runs: "eager" (segment-anything's), "blockwise" (the CPU's:
    matrix products at width C, the fastest there) or "folded" (one scaled_dot_product_attention
    kernel: accelerators, and any traced model, `device` "traced"). Windowed blocks on the CPU keep
    the eager form unless `windowed_on_cpu` (default WINDOWED_ON_CPU; see the module doc)."""
    if attention == "eager":
        return "eager"
    if device == "cpu":
        return (
            "blockwise"
            if not windowed or (WINDOWED_ON_CPU if windowed_on_cpu is None else windowed_on_cpu)
            else "eager"
        )
    return "folded"


def fused_kept_values(form: str, heads: int, head_dim: int, side: int) -> int:
    """Values per token a fused form saves for backward beyond q, k and v (which every form keeps):
    blockwise, the scaled q, the output and the two relative-position terms (side each); folded,
    q', k', v' and the output at width head_dim + 2 side."""
    if form == "blockwise":
        return heads * (2 * head_dim + 2 * side)
    if form == "folded":
        return 4 * heads * (head_dim + 2 * side)
    return 0


def _device_of(x: torch.Tensor) -> str:
    return "traced" if torch.compiler.is_compiling() or torch.compiler.is_exporting() else x.device.type


def fused_attention(attn: Attention, x: torch.Tensor, form: str | None = None) -> torch.Tensor:
    """segment-anything's Attention.forward on x (B, H, W, dim) without an N x N matrix kept: the
    same result (fp32: within 1e-5). `form`: "blockwise" | "folded" | None (the block's form on
    x's device, fused_form)."""
    form = form or fused_form("fused", _device_of(x), attn.windowed, attn.windowed_on_cpu)
    if form == "eager":
        return Attention.forward(attn, x)
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
        if form == "blockwise":
            out = _Blockwise.apply(q, k, v, rel_h, rel_w, attn.scale)
        else:
            out = _folded(q, k, v, rel_h, rel_w, attn.scale)
    return attn.proj(out.transpose(1, 2).reshape(b, h, w, heads * c))


class FusedAttention(Attention):
    """segment-anything's Attention (same parameters, same state dict) computed by fused_attention.
    `windowed`: the block attends within windows; `windowed_on_cpu`: such a block runs a fused form
    on the CPU too (None: WINDOWED_ON_CPU)."""

    windowed: bool = False
    windowed_on_cpu: bool | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_attention(self, x)


def set_attention(encoder: torch.nn.Module, mode: str, windowed: bool | None = None) -> int:
    """Switch every block of a segment-anything ImageEncoderViT (or any module holding such
    blocks) to `mode`: "fused" (each block then runs its fused form on its device, fused_form;
    windowed blocks on the CPU too when `windowed`, by default WINDOWED_ON_CPU) or "eager"
    (segment-anything's own Attention). Only the attention modules' class changes: parameters,
    wrappers and parametrizations stay. Returns the blocks switched to the fused class."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_MODES)}, not {mode!r}")
    fused = 0
    for block in encoder.modules():
        if not isinstance(block, Block) or not isinstance(block.attn, Attention):
            continue
        block.attn.__class__ = FusedAttention if mode == "fused" else Attention
        if mode == "fused":
            block.attn.windowed, block.attn.windowed_on_cpu = block.window_size > 0, windowed
        fused += mode == "fused"
    return fused


def attention_mode(encoder: torch.nn.Module) -> str:
    """ "fused" when any block of the encoder runs the fused form, else "eager"."""
    return "fused" if any(isinstance(m, FusedAttention) for m in encoder.modules()) else "eager"
