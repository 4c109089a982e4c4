"""Pre-flight memory planning: will this run fit, and with which micro-batch, accumulation and
activation checkpointing?

    plan = make_plan("sam-vit-h", "parser", batch_size=4, budget="24GB")
    plan.fits, plan.micro_batch, plan.accumulate, plan.checkpointing, plan.describe()

The estimate is a model, built from the architecture on the meta device (nothing is allocated):
- weights: every base parameter in fp32, plus the adapter's own tensors; under bf16/fp16 autocast
  a half-precision copy of the weights that the forward casts (autocast's weight cache);
- trainable state: a gradient and AdamW's two moments per trainable parameter (12 bytes);
- activations saved for backward, per image and per encoder block: SAVED_PER_TOKEN x tokens x width
  values (LayerNorm inputs, q/k/v, the attention output and projection, the MLP's hidden layer
  before and after its activation: about 16 widths per token for a ViT block with MLP ratio 4),
  plus the attention probabilities (heads x length^2 per attention sequence: one per image for a
  global block, one per window for SAM's windowed blocks; SAM also keeps the logits, x2). With
  activation checkpointing a block keeps only its input, and one block's full activations exist
  at a time during recomputation. When the method trains nothing in the encoder (decoder only,
  frozen), no encoder activation is kept.
- CLIP's text tower counts TEXT_SEQUENCES prompts (class names x templates).
- SLACK (x1.2) covers the allocator, workspaces and the head.

The figures are a model, not a measurement: each run records its measured peak
(`peak_memory_mb` in its events) to hold the model against. Calibration against GPU peaks is the
job of the device check script (issue 16); until then, read the plan as an estimate.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

SAVED_PER_TOKEN = 16
TEXT_SEQUENCES = 32
SLACK = 1.2
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
    """(image-encoder blocks, text-tower blocks): per block its tokens, width, heads, attention
    length, attention sequences per image and attention tensors kept."""
    if spec["family"] == "sam":
        grid = spec["img_size"] // spec["patch_size"]
        ws = spec["window_size"]
        windows = math.ceil(grid / ws) ** 2
        image = [
            {
                "tokens": grid * grid,
                "width": spec["encoder_embed_dim"],
                "heads": spec["encoder_num_heads"],
                "length": grid * grid if i in spec["encoder_global_attn_indexes"] else ws * ws,
                "sequences": 1 if i in spec["encoder_global_attn_indexes"] else windows,
                "kept": 2,  # segment-anything computes the attention explicitly: logits and probabilities
            }
            for i in range(spec["encoder_depth"])
        ]
        return image, []
    v, t = spec["vision_cfg"], spec["text_cfg"]
    tokens = (v["image_size"] // v["patch_size"]) ** 2 + 1
    heads = v["width"] // v.get("head_width", 64)
    image = [{"tokens": tokens, "width": v["width"], "heads": heads, "length": tokens, "sequences": 1, "kept": 1}] * v[
        "layers"
    ]
    text = [
        {
            "tokens": t["context_length"],
            "width": t["width"],
            "heads": t["heads"],
            "length": t["context_length"],
            "sequences": 1,
            "kept": 1,
        }
    ] * t["layers"]
    return image, text


def _block_bytes(block: dict, act: int) -> tuple[int, int]:
    """(everything a block keeps for backward, its input alone) for one sequence, in bytes."""
    full = SAVED_PER_TOKEN * block["tokens"] * block["width"]
    full += block["kept"] * block["heads"] * block["length"] ** 2 * block["sequences"]
    return full * act, block["tokens"] * block["width"] * act


def _transient(block: dict, act: int) -> int:
    attention = block["kept"] * block["heads"] * block["length"] ** 2 * block["sequences"]
    return (4 * block["tokens"] * block["width"] + attention) * act


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
        sizes = [_block_bytes(b, act) for b in blocks]
        if not through_encoder:  # nothing kept: the largest transient of one block (input, a few
            # intermediate widths and the attention it computes), freed as the forward moves on
            activations += max(_transient(b, act) for b in blocks) * sequences
        elif checkpointing:
            activations += (sum(inp for _, inp in sizes) + max(full for full, _ in sizes)) * sequences
        else:
            activations += sum(full for full, _ in sizes) * sequences
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


def inference_estimate(backbone: str, batch: int = 4, cache: int = 8) -> int:
    """Memory a predictor holds (bytes): its fp32 weights (an adapter merged into them adds
    nothing), the largest transient of one encoder block for `batch` images (full-resolution
    refinement encodes up to 4 crops at once), SAM's `cache` cached image embeddings (the click
    predictor's cache) or CLIP's class prompts through the text tower; x SLACK."""
    from adapt.pipeline import _meta_backbone, count_params

    info = count_params(backbone, "frozen")
    spec = _meta_backbone(backbone).spec
    image, text = _blocks(spec)
    act = max(_transient(b, 4) for b in image) * batch
    if text:
        act += max(_transient(b, 4) for b in text) * TEXT_SEQUENCES
    embeddings = 0
    if spec["family"] == "sam":
        grid = spec["img_size"] // spec["patch_size"]
        embeddings = cache * 256 * grid * grid * 4  # SAM's neck: 256 channels at the patch grid
    return int((info["base"] * 4 + act + embeddings) * SLACK)


def embedding_bytes(backbone: str) -> int:
    """One cached SAM image embedding (bytes)."""
    from adapt.pipeline import _meta_backbone

    spec = _meta_backbone(backbone).spec
    grid = spec["img_size"] // spec["patch_size"]
    return 256 * grid * grid * 4
