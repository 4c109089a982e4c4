"""What every backbone is (`Backbone`, `SamFamilyBackbone`), and reading checkpoint files safely.

A Backbone subclass is one architecture: built, it is the model plus what the library needs to
know about it; unbuilt, its classmethods answer from the catalog's settings (a spec) what the
memory planner, the upstream-format export and ONNX export ask of it, so nothing outside
adapt/backbones/ branches on an architecture. Imported by the architecture modules (sam.py,
tinyvit.py, sam2.py, clip.py) and by everything that holds a built model; it imports none of them,
so the package has no import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from adapt.files import sha256_file


@dataclass(frozen=True)
class BlockLayout:
    """Where the parts the SAM methods adapt sit in one encoder block (paths relative to the model;
    the parts' own paths relative to the block). width_in / width: the block's input and output
    widths (equal except where a pyramid encoder widens its stream, Hiera's first block of a stage)."""

    path: str
    width_in: int
    width: int
    qkv: str = "attn.qkv"  # Linear(width_in, 3 * width): q, k, v in thirds (or per head, see qkv_heads)
    proj: str = "attn.proj"
    mlp: str = "mlp"  # x -> mlp(norm2(x)) on the residual stream of width `width`
    norm2: str | None = "norm2"  # None: the MLP normalises its own input (TinyViT)
    qkv_heads: int = 0  # > 0: qkv's output is laid out per head, [q, k, v] for each of this many heads
    mlp_linears: tuple[str, ...] = ("mlp.lin1", "mlp.lin2")
    other_linears: tuple[str, ...] = ()  # further weights of the block (Hiera's widening shortcut)

    def linears(self) -> list[str]:
        """Every weight matrix of the block, in a fixed order (PARSER's default scope)."""
        return [f"{self.path}.{n}" for n in (self.qkv, self.proj, *self.mlp_linears, *self.other_linears)]


@dataclass(frozen=True)
class EncoderLayout:
    """A SAM image encoder as the methods see it: its attention blocks, the convolution(s) before
    them (stem) and after them (neck), and any other weights; PARSER's conv scope adapts stem and
    neck, its default scope everything. `encoder`: the module's path."""

    blocks: tuple[BlockLayout, ...]
    stem: tuple[str, ...]
    neck: tuple[str, ...]
    encoder: str = "image_encoder"
    others: tuple[str, ...] = ()  # further encoder weights outside the blocks (TinyViT's conv stage, merges)


@dataclass(frozen=True)
class MemoryBlock:
    """One encoder block as the memory planner models it (adapt/planner.py): per image, `tokens`
    of `width` channels, an MLP of `mlp` x width, and `heads` attention heads over sequences of
    `length` tokens, `sequences` of them (windows); `explicit`: the attention matrix is
    materialised (segment-anything's eager and TinyViT's attention), not fused (PyTorch's
    scaled_dot_product_attention, open_clip's nn.MultiheadAttention, Hiera's, SAM's fused form),
    which keeps none; `kept_widths`: what a fused form keeps instead (SAM's: the query's
    relative-position terms and its own copies, adapt.backbones.fused_attention)."""

    tokens: int
    width: int
    mlp: int
    heads: int
    length: int
    sequences: int
    explicit: bool
    kept_widths: float = 0.0  # more widths kept for backward (fused attention's copies; SAM 3's RoPE: q, k)


@dataclass
class Backbone:
    """A built model plus what the rest of the library needs to know about it.

    `model` is the module adapters attach to (segment_anything.Sam, sam2's SAM2Base or
    open_clip.CLIP). `heads` are the modules a task trains next to the adapter (SAM: the mask
    decoder; CLIP: the open-vocabulary head, added by that task). `weights_id` identifies the base
    weights: the sha256 of the checkpoint file, or "random-init" for an architecture built without
    one. Each architecture subclasses it (sam.py, tinyvit.py, sam2.py, clip.py); the catalog
    entry's kind names the subclass (adapt.backbones.architecture).
    """

    # Why this architecture has no ONNX export ("" where it has one): adapt.onnx_graphs refuses with it.
    onnx_refusal: ClassVar[str] = ""
    concepts: ClassVar[bool] = False  # segments every instance of a text phrase (segment_text): SAM 3

    name: str
    family: str  # "sam" | "clip"
    model: nn.Module
    spec: dict
    weights_id: str
    heads: list = field(default_factory=list)
    tokenizer: Callable | None = None
    method: str | None = None  # the adaptation method attached (adapt.methods.attach), if any

    # --- the architecture, asked of its catalog settings (no model is built) ----------------------
    @classmethod
    def spec_for(cls, entry) -> dict:
        """The architecture's settings for a catalog entry (adapt.backbones.catalog.BackboneEntry)."""
        return {"family": entry.family, **entry.arch}

    @classmethod
    def build(cls, entry, checkpoint=None) -> Backbone:
        """The model of a catalog entry, random-init or loaded from a local checkpoint file."""
        raise NotImplementedError

    @classmethod
    def input_size_of(cls, spec: dict) -> int:
        """Side of the square image the model takes."""
        raise NotImplementedError

    @classmethod
    def memory_blocks(cls, spec: dict, **attention) -> tuple[list[MemoryBlock], list[MemoryBlock]]:
        """(image-encoder blocks, text-tower blocks) as the memory planner models them. `attention`:
        `attention` ("fused" | "eager", the run's choice) and `device` ("cuda" | "cpu"), for the
        architectures whose attention has more than one form (SAM's ViT); others ignore them."""
        raise NotImplementedError

    @classmethod
    def embedding_values(cls, spec: dict) -> int:
        """Values of one cached image embedding (what an interactive predictor keeps per image);
        0 where nothing is cached."""
        return 0

    @classmethod
    def head_activation_values(cls, spec: dict) -> int:
        """Values the trained head keeps for backward per image (SAM's mask decoder); 0 where the
        planner counts none."""
        return 0

    @classmethod
    def upstream_checkpoint(cls, state: dict) -> dict:
        """What the upstream project's own checkpoint file holds for a state dict of this model."""
        return state

    def upstream_config(self) -> dict | None:
        """The architecture's config file for the upstream project, where that project does not
        know the architecture by name (written beside the checkpoint); None where it does."""
        return None

    def upstream_usage(self, dest: Path, config: Path | None = None) -> str:
        """Python that loads `dest` (an upstream_checkpoint file; `config`: its upstream_config
        file) with the upstream project."""
        raise NotImplementedError

    def weights_settings(self) -> dict:
        """Settings of the loaded weights that the backbone's name does not give (they travel with
        an upstream-format export); none by default."""
        return {}

    # --- the built model --------------------------------------------------------------------------
    @property
    def input_size(self) -> int:
        """Side of the square image the model takes."""
        return self.input_size_of(self.spec)

    def encoder_shape(self) -> dict:
        """{"tokens", "width", "depth"} of the image encoder (memory estimates)."""
        raise NotImplementedError

    def example_inputs(self, batch: int = 2, seed: int = 0) -> dict:
        """Deterministic inputs for checks and benchmarks, at the model's own input size."""
        raise NotImplementedError

    def forward(self, inputs: dict) -> torch.Tensor:
        """One flat output tensor that depends on every adapted weight (for equivalence checks)."""
        raise NotImplementedError

    def blocks(self) -> list[nn.Module]:
        """The transformer blocks whose activations dominate training memory (what activation
        checkpointing recomputes): SAM's image-encoder blocks, both CLIP towers' residual blocks."""
        raise NotImplementedError

    def set_attention(self, mode: str) -> None:
        """Switch the image encoder's attention: "fused" or "eager" (the reference). Only SAM's
        ViT has two forms (sam.py, fused_attention.py); elsewhere both names keep the one form
        the architecture has (SAM 2's Hiera and CLIP already call fused kernels)."""
        if mode not in ("fused", "eager"):
            raise ValueError(f"attention must be 'fused' or 'eager', not {mode!r}")

    @property
    def attention(self) -> str:
        """ "fused" or "eager": the form of the image encoder's attention (see set_attention)."""
        return "fused"

    def segment_text(self, image, phrase: str, threshold: float = 0.5) -> dict:
        """Every instance of a text phrase in an RGB image: "masks" (N, H, W) probabilities,
        "scores" (N,), "boxes" (N, 4) xyxy in image pixels. Only SAM 3 segments concepts."""
        raise ValueError(f"backbone {self.name} takes no text prompt; SAM 3 backbones (sam3, tiny-sam3) do")

    def inactive(self) -> tuple[str, ...]:
        """Names of the model's parts that its image path never runs (SAM 2's video memory): kept so
        that checkpoints load and export whole, but never trained nor counted as the base model."""
        return ()

    def inactive_parameter_ids(self) -> set[int]:
        ids, params = set(), dict(self.model.named_parameters())
        for name in self.inactive():
            parts = [params[name]] if name in params else self.model.get_submodule(name).parameters()
            ids.update(id(p) for p in parts)
        return ids

    def to(self, device) -> Backbone:
        """Move the model and the task heads (which are not submodules of the model)."""
        self.model.to(device)
        for head in self.heads:
            head.to(device)
        return self

    def set_checkpointing(self, enabled: bool = True) -> int:
        """Activation checkpointing of every block (`blocks`): in training with gradients on, a
        block keeps only its input and recomputes its activations during backward
        (torch.utils.checkpoint, non-reentrant), so memory no longer grows with depth x batch.
        Whatever a method put inside a block (wrapped linears, weight parametrizations) is
        recomputed with it. The state dict is untouched (the block's forward is wrapped on the
        instance); returns the number of blocks."""
        blocks = self.blocks()
        for block in blocks:
            if enabled and "forward" not in vars(block):
                block.forward = _Checkpointed(block.forward)
            elif not enabled and isinstance(vars(block).get("forward"), _Checkpointed):
                del block.forward
        return len(blocks)

    @property
    def checkpointing(self) -> bool:
        return any(isinstance(vars(b).get("forward"), _Checkpointed) for b in self.blocks())


# SAM's mask decoder keeps about 24 x 256 channels per image at the embedding grid for backward
DECODER_WIDTHS = 24


class SamFamilyBackbone(Backbone):
    """What the dichotomous task and the SAM methods ask of any SAM-family backbone (SAM ViT,
    MobileSAM, SAM 2): `resize` ("letterbox": longest side to the input size, padded; "stretch":
    resized to the square), `pixel_mean` / `pixel_std` (0..255), `encode` / `decode` (the two
    network calls of every prediction) and `layout` (where the adapted parts sit). The image
    embedding is at stride 16 of the input, and the mask decoder is the head."""

    resize: ClassVar[str] = "letterbox"

    @property
    def pixel_mean(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def pixel_std(self) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, images: torch.Tensor):
        """Image embeddings of normalised square images (B, 3, S, S)."""
        raise NotImplementedError

    def decode(self, embeddings, **prompt) -> torch.Tensor:
        """Low-resolution mask logits from embeddings and one prompt per image."""
        raise NotImplementedError

    def layout(self) -> EncoderLayout:
        raise NotImplementedError

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Every parameter `encode`'s output depends on (the image encoder's by default): when none
        trains, the trainer caches embeddings (adapt.embedding_cache)."""
        return list(self.model.image_encoder.parameters())

    @classmethod
    def embedding_grid(cls, spec: dict) -> int:
        """Side of the image embedding: the input at stride 16."""
        return cls.input_size_of(spec) // 16

    @classmethod
    def embedding_values(cls, spec: dict) -> int:
        return 256 * cls.embedding_grid(spec) ** 2

    @classmethod
    def head_activation_values(cls, spec: dict) -> int:
        return DECODER_WIDTHS * 256 * cls.embedding_grid(spec) ** 2

    def example_inputs(self, batch: int = 2, seed: int = 0) -> dict:
        """Images and one box each, inside the image."""
        g = torch.Generator().manual_seed(seed)
        size = self.input_size
        images = torch.randn(batch, 3, size, size, generator=g)
        lo = torch.rand(batch, 2, generator=g) * size * 0.4
        hi = lo + size * 0.3 + torch.rand(batch, 2, generator=g) * size * 0.3
        return {"images": images, "boxes": torch.cat([lo, hi], dim=1)}

    def forward(self, inputs: dict) -> torch.Tensor:
        return self.decode(self.encode(inputs["images"]), boxes=inputs["boxes"])


class PortableBuild(TorchFunctionMode):
    """Upstream constructors that assume a GPU or real tensors, made to build anywhere: Hiera's
    and SAM 3's ViT read their drop-path rates with torch.linspace(...).item(), which a shape-only
    build on the meta device (parameter counting) cannot do, so linspace makes CPU tensors (a
    handful of floats); SAM 3 fills caches (positional encodings, coordinates) with
    device="cuda", which is dropped, so they follow the default device. Every parameter still
    follows the device. A torch function mode is the calling thread's own, so builds in other
    threads (the studio's requests) are untouched."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.linspace:
            kwargs = {**kwargs, "device": "cpu"}
        elif str(kwargs.get("device", "")).startswith("cuda"):
            kwargs = {k: v for k, v in kwargs.items() if k != "device"}
        return func(*args, **kwargs)


class _Checkpointed:
    """A block's bound forward, run under non-reentrant activation checkpointing when it matters."""

    def __init__(self, forward):
        self.forward = forward

    def __call__(self, *args, **kwargs):
        block = self.forward.__self__
        if block.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(self.forward, *args, use_reentrant=False, **kwargs)
        return self.forward(*args, **kwargs)


def load_state_dict_file(path: str | Path) -> tuple[dict, str]:
    """Read a checkpoint without unpickling code: safetensors, or torch.load(weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle errors, truncated files
            raise ValueError(f"cannot read checkpoint {path}: {e}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} does not hold a state dict")
    return state, sha256_file(path)


def load_into(model: nn.Module, state: dict, path) -> None:
    """Strict load with a message that names what is missing or unexpected."""
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"checkpoint {path} does not fit this architecture: "
            f"{len(result.missing_keys)} missing (e.g. {result.missing_keys[:3]}), "
            f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})"
        )
