"""MobileSAM's image encoder: TinyViT-5M at SAM's 1024 px input (Zhang et al., "Faster Segment
Anything", arXiv 2306.14289), written here because MobileSAM ships as a repository, not a package.

MobileSAM keeps SAM's prompt encoder and mask decoder and replaces the ViT encoder by a TinyViT
distilled from it, so the model is segment-anything's own `Sam` with this encoder, and its
predictor is segment-anything's `SamPredictor`. The module and parameter names follow MobileSAM's
released checkpoint (`image_encoder.layers.1.blocks.0.attn.qkv.weight`, ...), so mobile_sam.pt
loads strictly. The architecture, stage by stage (input 1024 px):

- patch embedding: two 3x3 stride-2 conv+BN with a GELU between (to 1/4, width w0);
- stage 0: MBConv blocks (1x1 expand x4, 3x3 depthwise, 1x1 project, each conv+BN, residual);
- stages 1-3: TinyViT blocks: windowed attention (its own LayerNorm, one fused qkv laid out per
  head as [q, k, v], a learned bias per relative offset inside the window), a 3x3 depthwise
  conv+BN, an MLP (its own LayerNorm); each stage but the last ends with a patch merging
  (1x1 conv, 3x3 depthwise conv of stride 2, or 1 into the widest stage, 1x1 conv), so the last
  two stages both work at 1/16;
- neck: SAM's (1x1 conv to 256, LayerNorm2d, 3x3 conv, LayerNorm2d).
The classifier head that TinyViT carries (norm_head, head) is in the checkpoint but never runs.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import torch
from segment_anything.modeling.common import LayerNorm2d
from torch import nn
from torch.nn import functional as F

from adapt.backbones.base import BlockLayout, EncoderLayout, MemoryBlock
from adapt.backbones.sam import SamBackbone

# MobileSAM's own registry name of its one size ("vit_t") and that size's encoder
MOBILE_SAM_VIT_T = {"img_size": 1024, "tinyvit_widths": [64, 128, 160, 320], "tinyvit_depths": [2, 2, 6, 2]}


class ConvBN(nn.Sequential):
    """A bias-free convolution followed by batch norm (`c`, `bn`: the checkpoint's names)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))


class PatchEmbed(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.seq = nn.Sequential(ConvBN(3, width // 2, 3, 2), nn.GELU(), ConvBN(width // 2, width, 3, 2))

    def forward(self, x):
        return self.seq(x)


class MBConv(nn.Module):
    def __init__(self, width: int, expand: float = 4.0):
        super().__init__()
        hidden = int(width * expand)
        self.conv1, self.conv2 = ConvBN(width, hidden), ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, width)
        self.act = nn.GELU()

    def forward(self, x):  # (B, C, H, W)
        y = self.act(self.conv2(self.act(self.conv1(x))))
        return self.act(self.conv3(y) + x)


class PatchMerging(nn.Module):
    def __init__(self, grid: int, width: int, out: int, stride: int):
        super().__init__()
        self.grid = grid
        self.conv1, self.conv2 = ConvBN(width, out), ConvBN(out, out, 3, stride, groups=out)
        self.conv3 = ConvBN(out, out)
        self.act = nn.GELU()

    def forward(self, x):  # tokens (B, N, C) or a map (B, C, H, W) -> tokens
        if x.ndim == 3:
            x = x.transpose(1, 2).reshape(x.shape[0], -1, self.grid, self.grid)
        x = self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))
        return x.flatten(2).transpose(1, 2)


class WindowAttention(nn.Module):
    """Multi-head attention inside a window, with a learned bias per (|dy|, |dx|) offset."""

    def __init__(self, width: int, heads: int, window: int):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)  # per head: [q, k, v]
        self.proj = nn.Linear(width, width)
        cells = list(itertools.product(range(window), range(window)))
        offsets, index = {}, []
        for a in cells:
            for b in cells:
                index.append(offsets.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])), len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(heads, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.tensor(index).view(len(cells), len(cells)), persistent=False)

    def forward(self, x):  # (B, N, C)
        b, n, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, n, self.heads, 3, self.head_dim).permute(3, 0, 2, 1, 4)
        bias = self.attention_biases[:, self.attention_bias_idxs]
        attn = ((q @ k.transpose(-2, -1)) * self.head_dim**-0.5 + bias).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    def __init__(self, width: int, ratio: float = 4.0):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, int(width * ratio)), nn.Linear(int(width * ratio), width)
        self.act = nn.GELU()

    def forward(self, x):
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    def __init__(self, width: int, heads: int, window: int, grid: int):
        super().__init__()
        self.window, self.grid = window, grid
        self.attn = WindowAttention(width, heads, window)
        self.local_conv = ConvBN(width, width, 3, groups=width)
        self.mlp = Mlp(width)

    def forward(self, x):  # tokens (B, H*W, C)
        b, n, c = x.shape
        h = w = self.grid
        ws = self.window
        y = x.view(b, h, w, c)
        pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
        y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))
        ph, pw = h + pad_h, w + pad_w
        y = y.view(b, ph // ws, ws, pw // ws, ws, c).transpose(2, 3).reshape(-1, ws * ws, c)
        y = self.attn(y)
        y = y.view(b, ph // ws, pw // ws, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)[:, :h, :w]
        x = x + y.reshape(b, n, c)
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w)).view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class Stage(nn.Module):
    def __init__(self, blocks: list[nn.Module], downsample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViTEncoder(nn.Module):
    """spec: img_size, tinyvit_widths (4), tinyvit_depths (4), tinyvit_heads (4, stage 0 unused),
    tinyvit_windows (4, stage 0 unused), prompt_embed_dim (the neck's width)."""

    def __init__(self, spec: dict):
        super().__init__()
        widths, depths = spec["tinyvit_widths"], spec["tinyvit_depths"]
        heads, windows = spec["tinyvit_heads"], spec["tinyvit_windows"]
        self.img_size = spec["img_size"]
        self.patch_embed = PatchEmbed(widths[0])
        grid = self.img_size // 4
        self.layers = nn.ModuleList()
        for i, (width, depth) in enumerate(zip(widths, depths)):
            if i == 0:
                blocks = [MBConv(width) for _ in range(depth)]
            else:
                blocks = [TinyViTBlock(width, heads[i], windows[i], grid) for _ in range(depth)]
            down = None
            if i + 1 < len(widths):
                stride = 1 if i + 2 == len(widths) else 2  # into the widest stage: no downsampling
                down = PatchMerging(grid, width, widths[i + 1], stride)
                grid //= stride
            self.layers.append(Stage(blocks, down))
        self.grid = grid
        self.norm_head = nn.LayerNorm(widths[-1])  # TinyViT's classifier: in the checkpoint, never run
        self.head = nn.Linear(widths[-1], 1000)
        out = spec["prompt_embed_dim"]
        self.neck = nn.Sequential(
            nn.Conv2d(widths[-1], out, 1, bias=False),
            LayerNorm2d(out),
            nn.Conv2d(out, out, 3, padding=1, bias=False),
            LayerNorm2d(out),
        )

    def train(self, mode: bool = True):
        """Batch norms keep their running statistics in training too: adapting on a few images in
        batches of 1-4 would replace the distilled model's statistics with noise (and a frozen
        encoder would no longer be frozen). Their affine weights still train under `full`."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def forward(self, x):  # (B, 3, S, S) -> (B, 256, S/16, S/16)
        x = self.layers[0](self.patch_embed(x))
        for layer in self.layers[1:]:
            x = layer(x)
        b, _, c = x.shape
        return self.neck(x.transpose(1, 2).reshape(b, c, self.grid, self.grid))


class MobileSamBackbone(SamBackbone):
    """A built MobileSAM: segment-anything's Sam around the TinyViT encoder above. Its attention
    stages are what the methods adapt (per-head qkv, normalising MLPs); the classifier TinyViT
    carries is kept but never runs."""

    @classmethod
    def build_encoder(cls, spec: dict) -> nn.Module:
        return TinyViTEncoder(spec)

    @classmethod
    def memory_blocks(cls, spec: dict, **attention) -> tuple[list[MemoryBlock], list[MemoryBlock]]:
        """Stage 0 is convolutional (modelled as a block of its width at 1/4 without attention),
        stages 1-3 attend in windows at 1/8, 1/16 and 1/16, materialising the matrix."""
        size, out = spec["img_size"], []
        grids = [size // 4, size // 8, size // 16, size // 16]
        for k, (width, depth) in enumerate(zip(spec["tinyvit_widths"], spec["tinyvit_depths"])):
            ws, grid = spec["tinyvit_windows"][k], grids[k]
            heads, length, sequences = spec["tinyvit_heads"][k], ws * ws, math.ceil(grid / ws) ** 2
            if k == 0:
                heads = length = sequences = 0
            out += [MemoryBlock(grid * grid, width, 4, heads, length, sequences, explicit=k > 0)] * depth
        return out, []

    def layout(self) -> EncoderLayout:
        """Attention blocks in stages 1-3 (per-head qkv, normalising MLPs, a local depthwise conv
        each); the patch embedding's two convs as the stem; stage 0's MBConv convs and the patch
        mergings' convs as further weights; SAM's neck."""
        spec, enc = self.spec, "image_encoder"
        depths = spec["tinyvit_depths"]
        blocks = tuple(
            BlockLayout(
                f"{enc}.layers.{i}.blocks.{j}",
                spec["tinyvit_widths"][i],
                spec["tinyvit_widths"][i],
                norm2=None,
                mlp_linears=("mlp.fc1", "mlp.fc2"),
                other_linears=("local_conv.c",),
                qkv_heads=spec["tinyvit_heads"][i],
            )
            for i in range(1, len(depths))
            for j in range(depths[i])
        )
        convs = [f"{enc}.layers.0.blocks.{j}.conv{k}.c" for j in range(depths[0]) for k in (1, 2, 3)]
        convs += [f"{enc}.layers.{i}.downsample.conv{k}.c" for i in range(len(depths) - 1) for k in (1, 2, 3)]
        stem = (f"{enc}.patch_embed.seq.0.c", f"{enc}.patch_embed.seq.2.c")
        return EncoderLayout(blocks, stem=stem, neck=(f"{enc}.neck.0", f"{enc}.neck.2"), others=tuple(convs))

    def encoder_shape(self) -> dict:
        """Its first attention stage."""
        return {"tokens": (self.input_size // 8) ** 2, "width": self.spec["tinyvit_widths"][1], "depth": 10}

    def inactive(self) -> tuple[str, ...]:
        """TinyViT's ImageNet classifier, which segmentation never runs."""
        return ("image_encoder.norm_head", "image_encoder.head")

    def blocks(self) -> list:
        return [b for layer in self.model.image_encoder.layers for b in layer.blocks]

    def upstream_usage(self, dest: Path, config: Path | None = None) -> str:
        """MobileSAM's registry ("vit_t") for its one size; the same classes otherwise."""
        if all(self.spec.get(k) == v for k, v in MOBILE_SAM_VIT_T.items()):
            return (
                "from mobile_sam import sam_model_registry, SamPredictor  # github.com/ChaoningZhang/MobileSAM\n"
                f"sam = sam_model_registry['vit_t'](checkpoint={str(dest)!r})"
            )
        encoder = {k: v for k, v in self.spec.items() if k.startswith("tinyvit_") or k == "img_size"}
        return (
            f"# {self.name} is not MobileSAM's size: build its Sam with the same classes\n"
            f"# (adapt.backbones.tinyvit.TinyViTEncoder, encoder {json.dumps(encoder)})\n"
            f"sam.load_state_dict(torch.load({str(dest)!r}))"
        )
