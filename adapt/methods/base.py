"""The one contract every adaptation method obeys (in the spirit of peft's tuners).

`attach(backbone, config)` freezes the backbone, inserts the method and returns a `Handle`:

    handle.trainable_groups()  -> [ParamGroup(kind="adapter" | "coefficients" | "head", params)]
    handle.count()             -> {"adapter": n, "head": n, "trainable": n}
    handle.merge() / .unmerge()  fold the adapter into plain weights and back
    handle.state_dict() / .load_state_dict()  the trainable tensors only, stable names
    handle.detach()            remove the method, the backbone is as it was

Trainers, savers and the CLI only ever talk to this contract; no method is special-cased there.
Two mechanisms cover all methods:
- weight space (PARSER, H-CLIP, LoRA on CLIP): a torch parametrization on the frozen weight, so the
  module's own forward (fast paths included) uses the adapted weight; merge = replace it with a
  plain tensor holding the value, unmerge = put the parametrization back. (`WeightSpace` below.)
- activation space (LoRA and AdaptFormer on SAM, COBOT): a wrapper module with an added branch;
  merge = swap in a plain module with folded weights, unmerge = swap the wrapper back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from adapt.backbones import Backbone


@dataclass
class MethodConfig:
    """Hyperparameters shared by every method; each method's config extends it."""

    train_heads: bool = True  # SAM's mask decoder / the open-vocabulary head
    coefficient_lr_scale: float = 10.0  # lr of coefficient-like params relative to the adapter lr

    def to_dict(self) -> dict:
        return asdict(self)


class Float32Module(nn.Module):
    """A module whose floating parameters and buffers stay float32 whatever dtype the model around
    it is cast to (`model.to(torch.bfloat16)`, `.half()`); device moves apply as usual.

    SVD factors and coefficients (PARSER), Cayley maps and DCRC mixing (H-CLIP) and COBOT's
    coefficient products are small next to the model and lose their meaning at 8 mantissa bits
    (PARSER's learned weight change was 16% off in bf16; the Cayley solve has no bf16 CPU kernel).
    Their users compute in float32 and cast the result to the weight's dtype once.
    """

    def _apply(self, fn, recurse=True):
        def float32(module):
            tensors = [("p", n, t) for n, t in module._parameters.items()]
            tensors += [("b", n, t) for n, t in module._buffers.items()]
            return [(m, n, t.data) for m, n, t in tensors if t is not None and t.dtype == torch.float32]

        before = {mod: float32(mod) for mod in self.modules()}
        super()._apply(fn, recurse)
        for mod, kept in before.items():  # undo any dtype change, from the float32 values (no round trip)
            for kind, name, value in kept:
                now = mod._parameters[name] if kind == "p" else mod._buffers[name]
                if now is not None and now.dtype != torch.float32:
                    restored = value.to(device=now.device)
                    if kind == "p":
                        now.data = restored  # in place: optimizers keep their references
                        if now.grad is not None:
                            now.grad = now.grad.float()
                    else:
                        mod._buffers[name] = restored
        return self


@dataclass(frozen=True)
class Variant:
    """A set of options a method ships besides its defaults. Every variant is checked like the
    defaults (identity at step 0, merge, save/load: the tests and `selfcheck`); those with
    `compare=True` are a published configuration the benchmarks compare, the others are an
    implementation alternative kept for ablation."""

    options: dict
    why: str
    compare: bool = True


@dataclass(frozen=True)
class MemoryProfile:
    """What a method adds to a training step's memory, as the planner (adapt/planner.py) models it.

    scope: the linear layers whose inputs an encoder block keeps for the method's trainable tensors:
      "all" (qkv, proj, the MLP's two layers), "attention" (the fused in-projection and the
      out-projection), "qkv" (a LoRA branch beside the qkv layer), "adapter" (a parallel
      bottleneck's input), "none" (nothing in the encoder trains: no gradient flows through it).
    rebuilt: weight-space methods rebuild their weights every forward and the linear layer keeps
      the rebuilt W' for the input's gradient: the share of a block's weights they cover, or
      "attention" for the attention weights.
    transform_copies: fp32 copies of the adapter's tensors kept for backward outside the blocks
      (H-CLIP computes all its transforms once per forward, so checkpointing does not recompute them).
    """

    scope: str
    rebuilt: float | str = 0.0
    transform_copies: int = 0


@dataclass
class ParamGroup:
    kind: str  # "adapter" | "coefficients" | "head"
    params: list
    lr_scale: float = 1.0
    # Weight decay pulls towards zero. Coefficient-like parameters start at identities, ones or
    # singular values (PARSER's sigma, H-CLIP's f3/f4, COBOT's C, S, gamma and quaternions), so
    # decay would pull them away from the pretrained model rather than towards it: none for them.
    decay: bool = True

    def numel(self) -> int:
        return sum(p.numel() for p in self.params)


class Handle:
    """Base class of what attach() returns. Subclasses implement `_attach`, `_merge`, `_unmerge`,
    `_detach` and register their parameters with `_add_adapter_param`."""

    name: ClassVar[str] = ""
    families: ClassVar[tuple[str, ...]] = ("sam", "clip")
    Config: ClassVar[type] = MethodConfig
    summary: ClassVar[str] = ""
    # False where the adapter has a non-linear branch that cannot be folded into the base weights.
    fully_mergeable: ClassVar[bool] = True
    variants: ClassVar[tuple[Variant, ...]] = ()  # option sets checked (and compared) besides the defaults
    # What a training step costs beyond the base model; each method class declares its own (the
    # planner refuses a method without one, a subclass included: adapt.methods.memory_profile).
    memory: ClassVar[MemoryProfile | None] = None
    # Families whose measured figures (adapt.evidence) quote this method beside every other one.
    baseline_for: ClassVar[tuple[str, ...]] = ()

    def __init__(self, backbone: Backbone, config: MethodConfig):
        if backbone.family not in self.families:
            raise ValueError(
                f"method {self.name!r} adapts {'/'.join(self.families).upper()} backbones, not {backbone.name!r}"
            )
        if backbone.method is not None:
            raise ValueError(
                f"{backbone.name!r} already has a {backbone.method!r} adapter attached; detach it first "
                "(handle.detach()) or build a fresh backbone: methods do not stack"
            )
        self.backbone = backbone
        self.model = backbone.model
        self.config = config
        self.merged = False
        # the saved adapter's config (adapter_config.json) when loaded from a file (adapt.export.load_adapter)
        self.info: dict = {}
        self._coefficient_ids: set[int] = set()
        self._adapter_ids: set[int] = set()
        frozen = [p for p in self.model.parameters()] + [p for head in backbone.heads for p in head.parameters()]
        self._requires_grad = [(p, p.requires_grad) for p in frozen]  # restored by detach()
        for p in frozen:
            p.requires_grad_(False)
        self._attach()
        backbone.method = self.name
        self._named_adapter = self._collect(self._adapter_ids)
        self._named_head = self._head_parameters() if config.train_heads else {}
        for p in list(self._named_adapter.values()) + list(self._named_head.values()):
            p.requires_grad_(True)

    # --- to implement ---------------------------------------------------------------------------
    def _attach(self) -> None:
        raise NotImplementedError

    # Methods that edit the model keep their edits in `self.edits` (a WeightSpace or ModuleSwaps,
    # both with merge / unmerge / remove); methods that edit nothing override these three.
    def _merge(self) -> None:
        self.edits.merge()

    def _unmerge(self) -> None:
        self.edits.unmerge()

    def _detach(self) -> None:
        self.edits.remove()

    # --- helpers for subclasses -----------------------------------------------------------------
    def _add_adapter_param(self, p: nn.Parameter, coefficient: bool = False) -> nn.Parameter:
        self._adapter_ids.add(id(p))
        if coefficient:
            self._coefficient_ids.add(id(p))
        return p

    def _collect(self, ids: set[int]) -> dict[str, nn.Parameter]:
        named = {n: p for n, p in self.model.named_parameters(remove_duplicate=True) if id(p) in ids}
        for i, head in enumerate(self.backbone.heads):
            if head is not self.model and not _is_submodule(self.model, head):
                named.update({f"heads.{i}.{n}": p for n, p in head.named_parameters() if id(p) in ids})
        missing = len(ids) - len(named)
        assert missing == 0, f"{missing} adapter parameters are not reachable from the model"
        return named

    def _head_parameters(self) -> dict[str, nn.Parameter]:
        named: dict[str, nn.Parameter] = {}
        model_names = {id(p): n for n, p in self.model.named_parameters(remove_duplicate=True)}
        for i, head in enumerate(self.backbone.heads):
            for n, p in head.named_parameters():
                if id(p) in self._adapter_ids:
                    continue
                named[model_names.get(id(p), f"heads.{i}.{n}")] = p
        return named

    # --- the contract ---------------------------------------------------------------------------
    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        return dict(self._named_adapter)

    def head_parameters(self) -> dict[str, nn.Parameter]:
        return dict(self._named_head)

    def trainable_groups(self) -> list[ParamGroup]:
        adapter = [p for p in self._named_adapter.values() if id(p) not in self._coefficient_ids]
        coefs = [p for p in self._named_adapter.values() if id(p) in self._coefficient_ids]
        groups = [
            ParamGroup("adapter", adapter, 1.0),
            ParamGroup("coefficients", coefs, self.config.coefficient_lr_scale, decay=False),
            ParamGroup("head", list(self._named_head.values()), 1.0),
        ]
        return [g for g in groups if g.params]

    def count(self) -> dict[str, int]:
        adapter = sum(p.numel() for p in self._named_adapter.values())
        head = sum(p.numel() for p in self._named_head.values())
        skip = self._adapter_ids | self.backbone.inactive_parameter_ids()
        base = sum(p.numel() for p in self.model.parameters() if id(p) not in skip)
        return {"adapter": adapter, "head": head, "trainable": adapter + head, "base": base}

    def state_dict(self) -> dict[str, torch.Tensor]:
        named = {**self._named_adapter, **self._named_head}
        return {n: p.detach().clone().contiguous() for n, p in named.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        named = {**self._named_adapter, **self._named_head}
        missing = sorted(set(named) - set(state))
        unexpected = sorted(set(state) - set(named))
        if missing or unexpected:
            raise ValueError(
                f"adapter tensors do not fit method {self.name!r} on {self.backbone.name!r}: "
                f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
                f"(e.g. {unexpected[:3]})"
            )
        for n, p in named.items():
            t = state[n]
            if t.shape != p.shape:
                raise ValueError(f"adapter tensor {n} has shape {tuple(t.shape)}, expected {tuple(p.shape)}")
        was_merged = self.merged
        if was_merged:
            self.unmerge()
        with torch.no_grad():
            for n, p in named.items():
                p.copy_(state[n].to(p.dtype))
        if was_merged:
            self.merge()

    def merge(self) -> None:
        if not self.merged:
            self._merge()
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            self._unmerge()
            self.merged = False

    def detach(self) -> None:
        """Remove the method; the backbone's modules, weights and requires_grad flags are those it
        had before attach, and another method may be attached."""
        self.unmerge()
        self._detach()
        for p, flag in self._requires_grad:
            p.requires_grad_(flag)
        self.backbone.method = None

    # --- what `selfcheck` asks of a method beyond identity and merge -----------------------------
    def check_snapshot(self) -> dict:
        """State to compare after a few training steps (see check_report); none by default."""
        return {}

    def check_report(self, snapshot: dict) -> tuple[dict, bool]:
        """(figures for the report, whether they pass) after training from `snapshot`: the
        method's own invariants, e.g. H-CLIP's text-tower hyperspherical energy."""
        return {}, True

    def describe(self) -> dict:
        return {"method": self.name, "backbone": self.backbone.name, "config": self.config.to_dict(), **self.count()}


def _is_submodule(root: nn.Module, module: nn.Module) -> bool:
    return any(m is module for m in root.modules())


# --- activation space: swapping modules ---------------------------------------------------------


def get_module(root: nn.Module, dotted: str) -> nn.Module:
    return root.get_submodule(dotted)


def set_module(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


@dataclass
class Swap:
    """One place where a wrapper replaced a module: the original, the wrapper, and (when merged)
    the plain module with folded weights."""

    path: str
    original: nn.Module
    wrapper: nn.Module
    merged: nn.Module | None = None


class ModuleSwaps:
    """Book-keeping for activation-space methods: wrap, merge into plain modules, restore."""

    def __init__(self, root: nn.Module):
        self.root = root
        self.swaps: list[Swap] = []

    def wrap(self, path: str, make_wrapper) -> nn.Module:
        original = get_module(self.root, path)
        wrapper = make_wrapper(original)
        set_module(self.root, path, wrapper)
        self.swaps.append(Swap(path, original, wrapper))
        return wrapper

    def merge(self) -> None:
        for s in self.swaps:
            # A wrapper with nothing to fold (e.g. an Identity standing in for a moved norm) stays.
            s.merged = s.wrapper.merged_module() if hasattr(s.wrapper, "merged_module") else s.wrapper
            set_module(self.root, s.path, s.merged)

    def unmerge(self) -> None:
        for s in self.swaps:
            set_module(self.root, s.path, s.wrapper)
            s.merged = None

    def remove(self) -> None:
        for s in reversed(self.swaps):
            set_module(self.root, s.path, s.original)
        self.swaps.clear()


# --- weight space: parametrizations ------------------------------------------------------------


@dataclass
class _Registered:
    module: nn.Module
    tensor_name: str
    parametrization: nn.Module
    original: nn.Parameter | None = None  # the frozen base weight, held while merged


class WeightSpace:
    """Book-keeping for weight-space methods built on torch.nn.utils.parametrize.

    Merging never writes into the base weight (parametrize's `leave_parametrized=True` would
    overwrite it in place): the merged value goes into a new frozen Parameter and the original is
    kept, so unmerge is exact.
    """

    def __init__(self):
        self.entries: list[_Registered] = []

    def register(self, module: nn.Module, tensor_name: str, parametrization: nn.Module) -> nn.Module:
        parametrize.register_parametrization(module, tensor_name, parametrization, unsafe=True)
        self.entries.append(_Registered(module, tensor_name, parametrization))
        return parametrization

    def merge(self) -> None:
        for e in self.entries:
            with torch.no_grad():
                value = getattr(e.module, e.tensor_name).detach().clone()
            e.original = e.module.parametrizations[e.tensor_name].original
            parametrize.remove_parametrizations(e.module, e.tensor_name, leave_parametrized=False)
            e.module._parameters[e.tensor_name] = nn.Parameter(value, requires_grad=False)

    def unmerge(self) -> None:
        for e in self.entries:
            e.module._parameters[e.tensor_name] = e.original
            e.original = None
            parametrize.register_parametrization(e.module, e.tensor_name, e.parametrization, unsafe=True)

    def remove(self) -> None:
        for e in self.entries:
            if parametrize.is_parametrized(e.module, e.tensor_name):
                parametrize.remove_parametrizations(e.module, e.tensor_name, leave_parametrized=False)
        self.entries.clear()


class WeightSpaceHandle(Handle):
    """A Handle whose method is a set of parametrizations (PARSER, H-CLIP, LoRA on CLIP)."""

    def _attach(self) -> None:
        self.weights = self.edits = WeightSpace()
        self._register_parametrizations()

    def _register_parametrizations(self) -> None:
        raise NotImplementedError


class SwapHandle(Handle):
    """A Handle whose method wraps modules (LoRA and AdaptFormer on SAM, COBOT)."""

    def _attach(self) -> None:
        self.swaps = self.edits = ModuleSwaps(self.model)
        self._wrap_modules()

    def _wrap_modules(self) -> None:
        raise NotImplementedError
