"""What the UI asks of the library, as plain functions (also usable from gradio_client)."""

from __future__ import annotations

from functools import lru_cache

from adapt.methods import METHODS


@lru_cache(maxsize=64)
def _count(backbone: str, method: str) -> dict:
    import torch

    from adapt.backbones import build_backbone
    from adapt.methods import attach
    from adapt.tasks import attach_task_head

    with torch.device("meta"):  # shapes only: instant, no memory
        bb = build_backbone(backbone)
        attach_task_head(bb)
        return attach(bb, method).describe()


def describe_method(backbone: str, method: str) -> tuple[str, dict]:
    if method not in METHODS:
        return f"Unknown method {method!r}.", {}
    try:
        info = _count(backbone, method)
    except ValueError as e:
        return f"**{method}** cannot be used here: {e}", {}
    text = (f"**{method}**: {METHODS[method].summary}\n\n"
            f"Trains **{info['adapter']:,}** adapter parameters "
            f"({100 * info['adapter'] / info['base']:.3f}% of {backbone}), "
            f"**{info['trainable']:,}** with the task head.")
    return text, info
