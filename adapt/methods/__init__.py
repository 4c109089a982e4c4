"""Adaptation methods behind one interface, one registry by name.

    handle = attach(backbone, "parser", scope="conv")

See base.py for the contract every method obeys.
"""

from __future__ import annotations

import dataclasses
import math
import typing

from adapt.backbones import Backbone
from adapt.methods.adaptformer import AdaptFormer
from adapt.methods.base import Handle, MemoryProfile, MethodConfig, ParamGroup, Variant
from adapt.methods.baselines import Decoder, Frozen, Full
from adapt.methods.cobot import CobotAdaptFormer, CobotLora
from adapt.methods.hclip import Hclip
from adapt.methods.lora import Lora
from adapt.methods.lora_clip import LoraClip
from adapt.methods.parser import Parser

METHODS: dict[str, type[Handle]] = {
    cls.name: cls
    for cls in (Parser, Lora, AdaptFormer, CobotLora, CobotAdaptFormer, Hclip, LoraClip, Full, Decoder, Frozen)
}

__all__ = [
    "METHODS",
    "Handle",
    "MemoryProfile",
    "MethodConfig",
    "ParamGroup",
    "Variant",
    "attach",
    "baselines",
    "configurations",
    "make_config",
    "memory_profile",
    "methods_for",
]


def methods_for(family: str) -> list[str]:
    return [name for name, cls in METHODS.items() if family in cls.families]


def memory_profile(method: str) -> MemoryProfile:
    """What `method` declares a training step costs (its class's own `memory`). A method that
    declares none is refused rather than estimated as some other method, also where it subclasses
    one that does: what it adds may cost memory of its own."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    profile = vars(METHODS[method]).get("memory")
    if profile is None:
        raise ValueError(
            f"method {method!r} declares no memory profile (`memory = MemoryProfile(...)` in its class, "
            "adapt/methods/base.py): its training memory cannot be estimated"
        )
    return profile


def baselines(family: str) -> list[str]:
    """The methods a family's measured figures quote beside every other one (Handle.baseline_for)."""
    return [name for name, cls in METHODS.items() if family in cls.baseline_for]


def configurations(family: str | None = None, compared: bool = False) -> list[tuple[str, str, dict]]:
    """(method, family, options) for every configuration the library ships: each method's defaults
    and its declared variants, on each family it adapts. `compared`: only the defaults and the
    variants the benchmarks compare. selfcheck, the tests and the benchmarks iterate over this."""
    out = []
    for name, cls in METHODS.items():
        for fam in cls.families:
            if family is None or fam == family:
                out.append((name, fam, {}))
                out += [(name, fam, dict(v.options)) for v in cls.variants if v.compare or not compared]
    return out


def label(method: str, options: dict) -> str:
    """How a configuration is named in reports: "parser", "parser (scope=conv)"."""
    return method + (f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else "")


def make_config(method: str, **options) -> MethodConfig:
    """The method's config dataclass from keyword options; unknown options are an error."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    cls = METHODS[method].Config
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ValueError(f"method {method!r} has no option(s) {unknown}; it takes {sorted(names)}")
    hints = typing.get_type_hints(cls)
    for name, value in options.items():
        _check_option(name, value, hints[name])
    return cls(**options)


_OPTION_TYPES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _check_option(name: str, value, kind) -> None:
    """An option's value has its declared type (a float option takes an integer too; booleans are
    never numbers); a number must be finite."""
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
        str: lambda v: isinstance(v, str),
    }.get(kind)
    if ok is not None and not ok(value):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise ValueError(f"option {name!r} must be {_OPTION_TYPES[kind]}, not {shown}")


def attach(backbone: Backbone, method: str, **options) -> Handle:
    """Freeze the backbone, insert `method` into it and return the handle that controls it."""
    config = make_config(method, **options)
    return METHODS[method](backbone, config)
