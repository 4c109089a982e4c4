"""Pre-flight memory planning: will this run fit, and with which micro-batch, accumulation and
activation checkpointing?

    plan = make_plan("sam-vit-h", "parser", batch_size=4, budget="24GB")
    plan.fits, plan.micro_batch, plan.accumulate, plan.checkpointing, plan.describe()

The estimate is a model of what autograd keeps, from parameter counts on the meta device (nothing
is allocated, adapt.counts) and from what the architecture (its Backbone subclass's
`memory_blocks`, adapt/backbones/) and the method (its `memory` profile, adapt/methods/) declare,
read from the code that runs (segment-anything's ViT blocks, open_clip's residual blocks) rather
than fitted:
- weights: every base parameter in fp32, plus the adapter's own tensors; under bf16/fp16 autocast
  a half-precision copy of the weights that the forward casts (autocast's weight cache);
- trainable state: a gradient and AdamW's two moments per trainable parameter (12 bytes);
- activations saved for backward, per image and per encoder block: BASE_WIDTHS + mlp_ratio widths
  per token that any method keeps once gradients flow through the block, plus the inputs of the
  linear layers whose weights train (the method's scope: all of them for full fine-tuning and
  PARSER, one for a LoRA branch, ...), plus the attention probabilities where they are materialised (SAM:
  heads x length^2 per attention sequence, one per image for a global block, one per window for a
  windowed one; open_clip's fused attention keeps none), plus the rebuilt weights of a
  weight-space method (its `rebuilt` share); while a block's backward runs, the gradients of its attention
  matrices are in flight too. With activation checkpointing a block keeps only its input, and one
  block is recomputed and differentiated at a time. When the method trains nothing in the encoder
  (decoder only, frozen), no encoder activation is kept: only one block's forward transient, and
  with the embedding cache (adapt.embedding_cache) only while a new image or view is embedded; the
  cached embeddings live in host memory (up to its RAM budget, then on disk), not on the GPU.
- SAM's attention (adapt.backbones.fused_attention): eager keeps heads x length^2 values per
  sequence; the fused forms keep none, and instead the widths their form saves (`kept_widths`:
  the CPU's blockwise form, or the accelerators' folded one), so the estimate takes the run's
  `attention` and `device`.
- the trained head's activations (the architecture's `head_activation_values`: SAM's mask decoder
  at the embedding grid); CLIP's text tower counts TEXT_SEQUENCES prompts (class names x templates).
- SLACK (x1.2) is the plan's margin (allocator, workspaces, fragmentation).

bench/planner_check.py holds the estimate against measured step memory (docs/benchmarks.md, CPU);
each run also records its measured peak (`peak_memory_mb` in its events).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from adapt.backbones import MemoryBlock, architecture, spec_of
from adapt.counts import base_params, count_params
from adapt.methods import MemoryProfile, memory_profile

TEXT_SEQUENCES = 32
SLACK = 1.2
# Widths (x tokens) autograd keeps per block whatever trains, once gradients flow through it: the
# two LayerNorms' inputs, q, k and v, one more (SAM: q reshaped for the decomposed relative
# positions; CLIP: the fused attention's output) and the MLP activation's input (mlp_ratio widths).
BASE_WIDTHS = 6
# ... plus the inputs of the linear layers whose weights train, by the method's scope
# (adapt.methods.MemoryProfile): "all" adds 3 + mlp_ratio widths (qkv, proj, the MLP's two layers)
SCOPE_WIDTHS = {"attention": 2, "qkv": 1, "adapter": 1, "none": 0}
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


def memory_size(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def _attention(block: MemoryBlock) -> int:
    """Values in one materialised attention matrix set of a block (all heads and windows)."""
    return block.heads * block.length**2 * block.sequences if block.explicit else 0


def _attention_bytes(act: int) -> int:
    """Bytes per kept attention value: fp32, or under bf16/fp16 autocast 6, because autocast runs
    softmax in fp32 (its fp32 output is kept) and the next matmul keeps its half-precision copy."""
    return 4 if act == 4 else 6


def _saved(block: MemoryBlock, profile: MemoryProfile, act: int) -> int:
    """Bytes a block keeps for backward, per image, when gradients flow through it."""
    w, mlp = block.width, block.mlp
    extra = 3 + mlp if profile.scope == "all" else SCOPE_WIDTHS[profile.scope]
    widths = BASE_WIDTHS + mlp + extra + block.kept_widths
    return int(widths * block.tokens * w * act) + _attention(block) * _attention_bytes(act)


def _rebuilt(block: MemoryBlock, profile: MemoryProfile, act: int) -> int:
    """Bytes of rebuilt weights a weight-space method keeps per block (independent of the batch)."""
    share = profile.rebuilt
    w, mlp = block.width, block.mlp
    weights = (4 + 2 * mlp) * w * w  # qkv 3w^2, proj w^2, MLP 2 x mlp x w^2
    if share == "attention":
        share = 4 / (4 + 2 * mlp)
    return int(share * weights * act)


def _backward_transient(block: MemoryBlock, act: int) -> int:
    """Bytes in flight while one block's backward runs, per image: the gradients of the attention
    probabilities and logits (materialised attention) and a few widths of activation gradients."""
    return 2 * _attention(block) * _attention_bytes(act) + 2 * block.tokens * block.width * act


def _forward_transient(block: MemoryBlock, act: int) -> int:
    """Bytes one block holds at its peak in a forward without gradients, per image: its input, q, k
    and v, the MLP's hidden layer, and three attention-sized tensors (SAM adds the two
    relative-position terms to the logits one at a time, each into a new tensor), or what a fused
    form holds instead (kept_widths: its copies of q, k, v and the relative-position terms)."""
    return int(((4 + block.mlp + block.kept_widths) * block.tokens * block.width + 3 * _attention(block)) * act)


def _training_activations(
    blocks: list[MemoryBlock], profile: MemoryProfile, batch: int, checkpointing: bool, act: int
) -> int:
    inputs = [b.tokens * b.width * act * batch for b in blocks]
    saved = [_saved(b, profile, act) * batch + _rebuilt(b, profile, act) for b in blocks]
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
    attention: str = "fused",
    device: str = "cuda",
    **options,
) -> Estimate:
    """Training memory of one micro-batch step (bytes), from the architecture (see the module doc);
    `attention` ("fused" | "eager") and `device` ("cuda" | "cpu") pick the attention's form where an
    architecture has several (SAM's ViT)."""
    profile = memory_profile(method)
    info = count_params(backbone, method, **options)
    spec = spec_of(backbone)
    arch = architecture(spec)
    half = precision in ("bf16", "fp16")
    act = 2 if half else 4
    total = info["base"] + info["adapter"]  # frozen + adapter tensors (for "full", the encoder is the adapter)
    weights = total * 4 + (total * 2 if half else 0)
    state = info["trainable"] * 12
    image, text = arch.memory_blocks(spec, attention=attention, device=device)
    activations = 0
    through_encoder = info["adapter"] > 0  # otherwise no gradient flows through the encoder
    for blocks, sequences in ((image, micro_batch), (text, texts)):
        if not blocks:
            continue
        if through_encoder:
            activations += _training_activations(blocks, profile, sequences, checkpointing, act)
        else:  # nothing kept: the largest transient of one block, freed as the forward moves on
            activations += max(_forward_transient(b, act) for b in blocks) * sequences
    activations += profile.transform_copies * info["adapter"] * 4
    head = arch.head_activation_values(spec) * act * micro_batch  # the head trains in every method
    # with gradients through the encoder its activations are still kept while the head runs; without,
    # the encoder's transient is gone before the head starts
    activations = activations + head if through_encoder else max(activations, head)
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
            f"budget {memory_size(self.budget)}, estimate {memory_size(e.total)} (weights {memory_size(e.weights)}, "
            f"gradients + optimizer {memory_size(e.trainable_state)}, activations {memory_size(e.activations)}, x{SLACK} slack)"
        )
        if not self.fits:
            floor = int((e.weights + e.trainable_state) * SLACK)
            return f"{head}. It does not fit, even in micro-batches of 1 image with activation checkpointing. " + (
                f"Weights and optimizer state alone need {memory_size(floor)}: choose a parameter-efficient "
                "method or a smaller backbone."
                if floor > self.budget
                else "Try a smaller backbone, a lighter method, or a larger budget."
            )
        how = f"micro-batches of {self.micro_batch} x {self.accumulate} accumulation steps"
        return f"{head}. Fits with {how}, activation checkpointing {'on' if self.checkpointing else 'off'}."


def make_plan(
    backbone: str,
    method: str,
    batch_size: int,
    budget,
    precision: str = "bf16",
    attention: str = "fused",
    device: str = "cuda",
    **options,
) -> Plan:
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
            e = estimate(
                backbone, method, micro, checkpointing, precision, attention=attention, device=device, **options
            )
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
    base = base_params(backbone)
    spec = spec_of(backbone)
    arch = architecture(spec)
    image, text = arch.memory_blocks(spec)
    act = max(_forward_transient(b, 4) for b in image) * batch
    if text:
        act += max(_forward_transient(b, 4) for b in text) * TEXT_SEQUENCES
    embeddings = cache * arch.embedding_values(spec) * 4  # SAM's neck output (SAM 2: its pyramid); CLIP: none
    return int((base * 4 + act + embeddings) * SLACK)


def embedding_bytes(backbone: str) -> int:
    """One cached SAM image embedding (bytes)."""
    spec = spec_of(backbone)
    return architecture(spec).embedding_values(spec) * 4
