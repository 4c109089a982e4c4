"""What every backbone is once built (`Backbone`), and reading checkpoint files safely.

Imported by the family modules (sam.py, clip.py) and by everything that holds a built model; it
imports neither, so the package has no import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

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


@dataclass
class Backbone:
    """A built model plus what the rest of the library needs to know about it.

    `model` is the module adapters attach to (segment_anything.Sam or open_clip.CLIP).
    `heads` are the modules a task trains next to the adapter (SAM: the mask decoder; CLIP: the
    open-vocabulary head, added by that task). `weights_id` identifies the base weights: the
    sha256 of the checkpoint file, or "random-init" for an architecture built without one.
    Each family (sam.py, clip.py) subclasses it with its input size and its probe forward.
    """

    name: str
    family: str  # "sam" | "clip"
    model: nn.Module
    spec: dict
    weights_id: str
    heads: list = field(default_factory=list)
    tokenizer: Callable | None = None
    method: str | None = None  # the adaptation method attached (adapt.methods.attach), if any

    @property
    def input_size(self) -> int:
        """Side of the square image the model takes."""
        raise NotImplementedError

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

    def inactive(self) -> tuple[str, ...]:
        """Names of the model's parts that its image path never runs (SAM 2's video memory): kept so
        that checkpoints load and export whole, but never trained nor counted as the base model."""
        return ()

    def inactive_parameter_ids(self) -> set[int]:
        ids = set()
        for name in self.inactive():
            part = self.model.get_parameter(name) if name in dict(self.model.named_parameters(recurse=False)) else None
            params = [part] if part is not None else list(self.model.get_submodule(name).parameters())
            ids.update(id(p) for p in params)
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
