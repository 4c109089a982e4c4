"""Gradio UI. For now: the method explorer (what each method trains, and how much of it)."""

from __future__ import annotations

import gradio as gr

from adapt.backbones import BACKBONES
from adapt.methods import METHODS, methods_for
from app.service import describe_method


def build() -> gr.Blocks:
    with gr.Blocks(title="Segmentation adaptation studio") as demo:
        gr.Markdown("# Segmentation adaptation studio\n"
                    "Adapt SAM or CLIP to your images with parameter-efficient methods "
                    "(PARSER, COBOT, H-CLIP, LoRA, AdaptFormer).")
        with gr.Tab("Methods"):
            with gr.Row():
                backbone = gr.Dropdown(list(BACKBONES), value="sam-vit-b", label="Backbone")
                method = gr.Dropdown(methods_for("sam"), value="parser", label="Method")
            summary = gr.Markdown()
            counts = gr.JSON(label="Parameter counts")

            def on_backbone(name):
                family = "sam" if name.startswith(("sam", "tiny-sam")) else "clip"
                choices = methods_for(family)
                return gr.Dropdown(choices=choices, value=choices[0])

            backbone.change(on_backbone, backbone, method)
            for trigger in (backbone.change, method.change, demo.load):
                trigger(describe_method, [backbone, method], [summary, counts], api_name=False)
    return demo


__all__ = ["build", "METHODS"]
