"""Pre-flight memory planning: will this run fit, and with which micro-batch, accumulation and
activation checkpointing?

    plan = make_plan("sam-vit-h", "parser", batch_size=4, budget="24GB")
    plan.fits, plan.micro_batch, plan.accumulate, plan.checkpointing, plan.describe()

The estimate is a model, built from the architecture on the meta device (nothing is allocated),
of what autograd keeps, read from the code that runs (segment-anything's ViT blocks, open_clip's
residual blocks) rather than fitted:
- weights: every base parameter in fp32, plus the adapter's own tensors; under bf16/fp16 autocast
  a half-precision copy of the weights that the forward casts (autocast's weight cache);
- trainable state: a gradient and AdamW's two moments per trainable parameter (12 bytes);
- activations saved for backward, per image and per encoder block: BASE_WIDTHS + mlp_ratio widths
  per token that any method keeps once gradients flow through the block, plus the inputs of the
  linear layers whose weights train (SCOPES: all of them for full fine-tuning and PARSER, one for a
  LoRA branch, ...), plus the attention probabilities where they are materialised (SAM:
  heads x length^2 per attention sequence, one per image for a global block, one per window for a
  windowed one; open_clip's fused attention keeps none), plus the rebuilt weights of a
  weight-space method (REBUILT); while a block's backward runs, the gradients of its attention
  matrices are in flight too. With activation checkpointing a block keeps only its input, and one
  block is recomputed and differentiated at a time. When the method trains nothing in the encoder
  (decoder only, frozen), no encoder activation is kept: only one block's forward transient.
- SAM's mask decoder (DECODER_WIDTHS at the embedding grid); CLIP's text tower counts
  TEXT_SEQUENCES prompts (class names x templates).
- SLACK (x1.2) is the plan's margin (allocator, workspaces, fragmentation).

bench/planner_check.py holds the estimate against measured step memory (docs/benchmarks.md, CPU);
each run also records its measured peak (`peak_memory_mb` in its events).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

TEXT_SEQUENCES = 32
SLACK = 1.2
# Widths (x tokens) autograd keeps per block whatever trains, once gradients flow through it: the
# two LayerNorms' inputs, q, k and v, one more (SAM: q reshaped for the decomposed relative
# positions; CLIP: the fused attention's output) and the MLP activation's input (mlp_ratio widths).
BASE_WIDTHS = 6
# ... plus the input of each linear layer whose weight trains, by where a method puts its trainable
# tensors: "all" (qkv, proj, the MLP's two layers: 3 + mlp_ratio), "attention" (the fused
# in-projection and the out-projection), "qkv" (a LoRA branch beside the qkv layer), "adapter" (a
# parallel bottleneck's input), "none" (nothing in the encoder: no gradient flows through it).
SCOPES = {
    "full": "all",
    "parser": "all",
    "lora": "qkv",
    "cobot-lora": "qkv",
    "adaptformer": "adapter",
    "cobot-adaptformer": "adapter",
    "hclip": "attention",
    "lora-clip": "attention",
}
# Weight-space methods rebuild their weights every forward; the linear layer keeps the rebuilt W'
# for the input's gradient: a copy of the weights they cover (the fraction of a block's weights).
REBUILT = {"parser": 1.0, "hclip": "attention", "lora-clip": "attention"}
# H-CLIP computes all its transforms once per forward, outside the blocks (so checkpointing does not
# recompute them): the stacked generators, their DCRC mixing and the transforms themselves, about
# three fp32 copies of its generator tensors, kept for backward
TRANSFORM_COPIES = {"hclip": 3}
DECODER_WIDTHS = 24  # SAM's mask decoder per image: ~24 x 256 channels at the embedding grid
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20}
_UNITS.update({"g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40})


def parse_bytes(text: str | int | float) -> int:
    """ "16GB", "24 GiB", "800MB", 1e9 -> bytes (GB and GiB both mean 2**30, as GPU makers' do not
    matter here: a plan keeps a margin anyway)."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"a memory size like 16GB, 24GiB or 800MB, not {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def _blocks(spec: dict) -> tuple[list[dict], list[dict]]:
    """(image-encoder blocks, text-tower blocks): per block its tokens, width, MLP ratio, heads,
    attention length, attention sequences per image (windows) and whether the attention matrix is
    materialised (segment-anything computes it explicitly; open_clip's nn.MultiheadAttention runs
    fused scaled-dot-product attention, which keeps no length^2 matrix)."""
    if spec.get("kind") == "sam2":
        return _hiera_blocks(spec), []
    if spec.get("kind") == "tinyvit":
        return _tinyvit_blocks(spec), []
    if spec["family"] == "sam":
        grid = spec["img_size"] // spec["patch_size"]
        ws = spec["window_size"]
        windows = math.ceil(grid / ws) ** 2
        image = [
            {
                "tokens": grid * grid,
                "width": spec["encoder_embed_dim"],
                "mlp": 4,
                "heads": spec["encoder_num_heads"],
                "length": grid * grid if i in spec["encoder_global_attn_indexes"] else ws * ws,
                "sequences": 1 if i in spec["encoder_global_attn_indexes"] else windows,
                "explicit": True,
            }
            for i in range(spec["encoder_depth"])
        ]
        return image, []
    v, t = spec["vision_cfg"], spec["text_cfg"]
    tokens = (v["image_size"] // v["patch_size"]) ** 2 + 1
    heads = v["width"] // v.get("head_width", 64)
    common = {"sequences": 1, "explicit": False}
    image = [
        {"tokens": tokens, "width": v["width"], "mlp": v.get("mlp_ratio", 4), "heads": heads, "length": tokens} | common
    ] * v["layers"]
    n = t["context_length"]
    text = [{"tokens": n, "width": t["width"], "mlp": t.get("mlp_ratio", 4), "heads": t["heads"], "length": n} | common]
    return image, text * t["layers"]


def _hiera_blocks(spec: dict) -> list[dict]:
    """SAM 2's Hiera: stage k works at 1/4 / 2^k of the input with width and heads x 2^k, in windows
    of window_spec[k] (global attention in global_att_blocks); its attention is PyTorch's fused
    scaled_dot_product_attention, which keeps no length^2 matrix."""
    blocks, index = [], 0
    for k, depth in enumerate(spec["stages"]):
        grid = spec["image_size"] // 4 // 2**k
        ws = spec["window_spec"][k]
        for _ in range(depth):
            glob = index in spec["global_att_blocks"]
            blocks.append(
                {
                    "tokens": grid * grid,
                    "width": spec["embed_dim"] * 2**k,
                    "mlp": 4,
                    "heads": spec["num_heads"] * 2**k,
                    "length": grid * grid if glob else ws * ws,
                    "sequences": 1 if glob else math.ceil(grid / ws) ** 2,
                    "explicit": False,
                }
            )
            index += 1
    return blocks


def _tinyvit_blocks(spec: dict) -> list[dict]:
    """MobileSAM's TinyViT: stage 0 is convolutional (modelled as a block of its width at 1/4 without
    attention), stages 1-3 attend in windows at 1/8, 1/16 and 1/16, materialising the matrix."""
    size, out = spec["img_size"], []
    grids = [size // 4, size // 8, size // 16, size // 16]
    for k, (width, depth) in enumerate(zip(spec["tinyvit_widths"], spec["tinyvit_depths"])):
        ws, grid = spec["tinyvit_windows"][k], grids[k]
        attention = {"heads": spec["tinyvit_heads"][k], "length": ws * ws, "sequences": math.ceil(grid / ws) ** 2}
        if k == 0:
            attention = {"heads": 0, "length": 0, "sequences": 0}
        out += [{"tokens": grid * grid, "width": width, "mlp": 4, "explicit": k > 0, **attention}] * depth
    return out


def _embedding_grid(spec: dict) -> int:
    """Side of SAM's (and SAM 2's) image embedding: the input at stride 16."""
    return spec.get("img_size", spec.get("image_size", 0)) // 16


def _embedding_values(spec: dict) -> int:
    """Values of one cached image embedding: SAM's 256 x g x g; SAM 2's pyramid adds the decoder's two
    finer levels (d/8 channels at 4g, d/4 at 2g), four times as much in all."""
    grid = _embedding_grid(spec)
    if spec.get("kind") == "sam2":
        d = spec["d_model"]
        return d * grid * grid + d // 8 * (4 * grid) ** 2 + d // 4 * (2 * grid) ** 2
    return 256 * grid * grid


def _attention(block: dict) -> int:
    """Values in one materialised attention matrix set of a block (all heads and windows)."""
    return block["heads"] * block["length"] ** 2 * block["sequences"] if block["explicit"] else 0


def _attention_bytes(act: int) -> int:
    """Bytes per kept attention value: fp32, or under bf16/fp16 autocast 6, because autocast runs
    softmax in fp32 (its fp32 output is kept) and the next matmul keeps its half-precision copy."""
    return 4 if act == 4 else 6


def _saved(block: dict, method: str, act: int) -> int:
    """Bytes a block keeps for backward, per image, when gradients flow through it."""
    w, mlp = block["width"], block["mlp"]
    extra = {"all": 3 + mlp, "attention": 2, "qkv": 1, "adapter": 1}.get(SCOPES.get(method, "all"), 0)
    return (BASE_WIDTHS + mlp + extra) * block["tokens"] * w * act + _attention(block) * _attention_bytes(act)


def _rebuilt(block: dict, method: str, act: int) -> int:
    """Bytes of rebuilt weights a weight-space method keeps per block (independent of the batch)."""
    share = REBUILT.get(method, 0.0)
    w, mlp = block["width"], block["mlp"]
    weights = (4 + 2 * mlp) * w * w  # qkv 3w^2, proj w^2, MLP 2 x mlp x w^2
    if share == "attention":
        share = 4 / (4 + 2 * mlp)
    return int(share * weights * act)


def _backward_transient(block: dict, act: int) -> int:
    """Bytes in flight while one block's backward runs, per image: the gradients of the attention
    probabilities and logits (materialised attention) and a few widths of activation gradients."""
    return 2 * _attention(block) * _attention_bytes(act) + 2 * block["tokens"] * block["width"] * act


def _forward_transient(block: dict, act: int) -> int:
    """Bytes one block holds at its peak in a forward without gradients, per image: its input, q, k
    and v, the MLP's hidden layer, and three attention-sized tensors (SAM adds the two
    relative-position terms to the logits one at a time, each into a new tensor)."""
    return ((4 + block["mlp"]) * block["tokens"] * block["width"] + 3 * _attention(block)) * act


def _training_activations(blocks: list[dict], method: str, batch: int, checkpointing: bool, act: int) -> int:
    inputs = [b["tokens"] * b["width"] * act * batch for b in blocks]
    saved = [_saved(b, method, act) * batch + _rebuilt(b, method, act) for b in blocks]
    transient = [_backward_transient(b, act) * batch for b in blocks]
    if checkpointing:  # blocks keep their inputs; one block is recomputed (and differentiated) at a time
        return sum(inputs) + max(s + t for s, t in zip(saved, transient))
    # without: everything is kept; backward runs from the last block down, freeing as it goes
    return max(sum(saved[: i + 1]) + transient[i] for i in range(len(blocks)))


@dataclass(frozen=True)
class Estimate:
    weights: int
    trainable_state: int
    activations: int

    @property
    def total(self) -> int:
        return int((self.weights + self.trainable_state + self.activations) * SLACK)


def estimate(
    backbone: str,
    method: str,
    micro_batch: int,
    checkpointing: bool,
    precision: str,
    texts: int = TEXT_SEQUENCES,
    **options,
) -> Estimate:
    """Training memory of one micro-batch step (bytes), from the architecture (see the module doc)."""
    from adapt.pipeline import _meta_backbone, count_params

    info = count_params(backbone, method, **options)
    spec = _meta_backbone(backbone).spec
    half = precision in ("bf16", "fp16")
    act = 2 if half else 4
    total = info["base"] + info["adapter"]  # frozen + adapter tensors (for "full", the encoder is the adapter)
    weights = total * 4 + (total * 2 if half else 0)
    state = info["trainable"] * 12
    image, text = _blocks(spec)
    activations = 0
    through_encoder = info["adapter"] > 0  # otherwise no gradient flows through the encoder
    for blocks, sequences in ((image, micro_batch), (text, texts)):
        if not blocks:
            continue
        if through_encoder:
            activations += _training_activations(blocks, method, sequences, checkpointing, act)
        else:  # nothing kept: the largest transient of one block, freed as the forward moves on
            activations += max(_forward_transient(b, act) for b in blocks) * sequences
    activations += TRANSFORM_COPIES.get(method, 0) * info["adapter"] * 4
    if spec["family"] == "sam":  # the mask decoder (trained in every method) at the embedding grid
        grid = _embedding_grid(spec)
        activations += DECODER_WIDTHS * 256 * grid * grid * act * micro_batch
    return Estimate(weights, state, activations)


@dataclass(frozen=True)
class Plan:
    backbone: str
    method: str
    batch_size: int
    budget: int
    precision: str
    micro_batch: int
    accumulate: int
    checkpointing: bool
    estimate: Estimate
    fits: bool

    def describe(self) -> str:
        e = self.estimate
        head = (
            f"{self.method} on {self.backbone}, batch {self.batch_size}, {self.precision}: "
            f"budget {_gb(self.budget)}, estimate {_gb(e.total)} (weights {_gb(e.weights)}, "
            f"gradients + optimizer {_gb(e.trainable_state)}, activations {_gb(e.activations)}, x{SLACK} slack)"
        )
        if not self.fits:
            floor = int((e.weights + e.trainable_state) * SLACK)
            return f"{head}. It does not fit, even in micro-batches of 1 image with activation checkpointing. " + (
                f"Weights and optimizer state alone need {_gb(floor)}: choose a parameter-efficient "
                "method or a smaller backbone."
                if floor > self.budget
                else "Try a smaller backbone, a lighter method, or a larger budget."
            )
        how = f"micro-batches of {self.micro_batch} x {self.accumulate} accumulation steps"
        return f"{head}. Fits with {how}, activation checkpointing {'on' if self.checkpointing else 'off'}."


def make_plan(backbone: str, method: str, batch_size: int, budget, precision: str = "bf16", **options) -> Plan:
    """The plan for `batch_size` images per step within `budget` (bytes or "24GB"): the largest
    micro-batch without activation checkpointing that fits, else the largest with it (recomputing
    costs about a third more compute; accumulation costs little); `fits` False when nothing does
    (the plan then holds the smallest setting, for its message)."""
    budget = parse_bytes(budget)
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, not {batch_size}")
    micros, m = [], batch_size
    while True:
        micros.append(m)
        if m == 1:
            break
        m = math.ceil(m / 2)
    last = None
    for checkpointing in (False, True):
        for micro in micros:
            e = estimate(backbone, method, micro, checkpointing, precision, **options)
            last = (micro, checkpointing, e)
            if e.total <= budget:
                acc = math.ceil(batch_size / micro)
                return Plan(backbone, method, batch_size, budget, precision, micro, acc, checkpointing, e, True)
    micro, checkpointing, e = last
    return Plan(backbone, method, batch_size, budget, precision, micro, batch_size, checkpointing, e, False)


def inference_estimate(backbone: str, batch: int = 1, cache: int = 8) -> int:
    """Memory a predictor holds (bytes): its fp32 weights (an adapter merged into them adds
    nothing), the largest transient of one encoder block for `batch` images, SAM's `cache` cached
    image embeddings (the click predictor's cache) or CLIP's class prompts through the text tower;
    x SLACK. Full-resolution refinement encodes up to 4 crops at once, 4x this transient: on a GPU
    without that room, the request finishes on the CPU (app.placement.run)."""
    from adapt.pipeline import _meta_backbone, count_params

    info = count_params(backbone, "frozen")
    spec = _meta_backbone(backbone).spec
    image, text = _blocks(spec)
    act = max(_forward_transient(b, 4) for b in image) * batch
    if text:
        act += max(_forward_transient(b, 4) for b in text) * TEXT_SEQUENCES
    embeddings = 0
    if spec["family"] == "sam":
        embeddings = cache * _embedding_values(spec) * 4  # SAM's neck output (SAM 2: its pyramid)
    return int((info["base"] * 4 + act + embeddings) * SLACK)


def embedding_bytes(backbone: str) -> int:
    """One cached SAM image embedding (bytes)."""
    from adapt.pipeline import _meta_backbone

    return _embedding_values(_meta_backbone(backbone).spec) * 4
