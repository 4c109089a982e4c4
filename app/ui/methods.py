"""The studio's Methods tab (the explorer): what each method trains on each backbone, and the
measured few-shot figure (choices and descriptions from app.catalog)."""

from __future__ import annotations

import gradio as gr

from adapt.backbones import BACKBONES, family_of
from adapt.methods import methods_for
from app.catalog import describe_method
from app.ui.common import REPO

FEWSHOT_FIGURE = REPO / "docs" / "img" / "fewshot-params-dice.png"  # bench/fewshot_sam.py --plot


def methods_tab() -> None:
    with gr.Tab("Methods", id="methods"):
        with gr.Row():
            backbone = gr.Dropdown(list(BACKBONES), value="sam-vit-b", label="Backbone")
            method = gr.Dropdown(methods_for("sam"), value="parser", label="Method")
        summary = gr.Markdown(describe_method("sam-vit-b", "parser")[0])
        counts = gr.JSON(describe_method("sam-vit-b", "parser")[1], label="Parameter counts")
        if FEWSHOT_FIGURE.exists():  # measured, with its command, in docs/benchmarks.md
            gr.Markdown(
                "**Measured few-shot figures** (bundled tiny-sam, mean of 5, 10 and 20 labelled images, 5 seeds, "
                "each method at its tuned learning rate: held-out Dice with its 95% interval, against each "
                "method's adapter parameters). Where intervals overlap, the methods are not shown apart; the "
                "paired comparisons are in docs/benchmarks.md."
            )
            gr.Image(str(FEWSHOT_FIGURE), label="Held-out Dice against adapter parameters", interactive=False)

    def on_backbone(name):
        choices = methods_for(family_of(name))
        return gr.Dropdown(choices=choices, value=choices[0])

    backbone.change(on_backbone, backbone, method, api_visibility="private")
    for trigger in (backbone.change, method.change):
        trigger(describe_method, [backbone, method], [summary, counts], api_visibility="private")
