"""The studio's Preview tab: predict on an image at full resolution with one of this browser's
adapters or a frozen backbone, optionally with clicks (a binary mask) or class names (a class map);
the actions are app.studio's."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import gradio as gr

from adapt.tasks import TASKS
from app import labeller
from app.studio import Studio, UserError, parse_classes, parse_clicks
from app.ui.common import example_path, examples, model_pickers, user_errors, valid_owner
from app.ui.messages import api_endpoint, in_page, message

# the open-vocabulary preview's default classes: the objects of assets/examples/colours.jpg, which
# the bundled tiny-clip tells apart zero-shot (see assets/examples/README.md)
EXAMPLE_CLASSES = "background, red object, cyan object, yellow object, white object"


def preview_tab(studio: Studio, owner, task) -> dict:
    with gr.Tab("4. Preview", id="preview"):
        with gr.Row():
            with gr.Column():
                form = _request_form()
            with gr.Column():
                form.main = gr.Image(label="Mask / label map (full resolution)", format="png", elem_id="predict-main")
                form.extra = gr.Image(label="Cut-out / legend", format="png", image_mode=None, elem_id="predict-extra")
                form.over = gr.Image(label="Overlay", format="png", elem_id="predict-overlay")
                form.info = gr.Markdown(elem_id="predict-info")
        form.scale = gr.State(1.0)
        _wire(studio, owner, task, form)  # in the tab: its hidden API trigger too
    return {"adapter": form.adapter, "classes": form.classes, "backbone": form.backbone}


def _request_form() -> SimpleNamespace:
    """The image (an upload or an example), its clicks, the model and the class names."""
    with gr.Row():
        image = gr.File(
            label="Image (any size up to the pixel limit)",
            file_types=["image"],
            elem_id="predict-image",
            scale=2,
        )
        example = gr.Dropdown(
            [(Path(p).stem, p) for p in examples()],
            label="or an example",
            scale=1,
            elem_id="predict-example",
        )
    view = gr.Image(
        label="Optional: click to add points (dichotomous)",
        interactive=False,
        format="png",
        height=320,
        elem_id="predict-view",
    )
    with gr.Row():
        mode = gr.Radio(["foreground point", "background point"], value="foreground point", label="Click adds")
        clicks = gr.Textbox(
            label="clicks", placeholder="x,y,label; ... (label 1 object, 0 background)", elem_id="clicks"
        )
    adapter, backbone = model_pickers("adapter", "predict-backbone", "backbone (used when no adapter is chosen)")
    classes = gr.Textbox(
        EXAMPLE_CLASSES,
        label="classes (with tiny-clip: colour names, as for colours.jpg)",
        placeholder="background, sky, road, car",
        visible=False,
        elem_id="predict-classes",
    )
    with gr.Row(equal_height=True):
        run = gr.Button("Predict", variant="primary", elem_id="predict", scale=1)
        runs = message("predict-runs", "Runs: frozen " + backbone.value + " (no adapter)")
    msg = message("predict-msg")
    return SimpleNamespace(
        runs=runs,
        msg=msg,
        image=image,
        example=example,
        view=view,
        mode=mode,
        clicks=clicks,
        adapter=adapter,
        backbone=backbone,
        classes=classes,
        run=run,
    )


def _wire(studio: Studio, owner, task, form: SimpleNamespace) -> None:
    @user_errors
    def show(path):
        if not path:
            return gr.skip(), gr.skip(), gr.skip()
        img = studio.load_image(path)
        s = min(1.0, labeller.DISPLAY / max(img.shape[:2]))
        shown = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else img
        return shown, s, ""

    def pick(path):
        path = example_path(path)
        return (path,) + show(path)

    def add_click(text, m, s, evt: gr.SelectData):
        x, y = evt.index[0] / s, evt.index[1] / s
        part = f"{x:.0f},{y:.0f},{1 if m.startswith('foreground') else 0}"
        return f"{text}; {part}" if text and text.strip() else part

    def predict(owner, image, adapter, backbone, task, classes, clicks):
        outputs, desc = studio.predict(owner, image, adapter, backbone, task, classes, clicks)
        second = outputs.get("cutout", outputs.get("legend"))
        return outputs["main"], second, outputs["overlay"], desc

    def predict_in_page(*args):
        return (*predict(*args), "Done: the results are on the right.")

    f = form
    f.image.upload(show, f.image, [f.view, f.scale, f.clicks], api_visibility="private")
    f.example.input(pick, f.example, [f.image, f.view, f.scale, f.clicks], api_visibility="private")
    f.view.select(add_click, [f.clicks, f.mode, f.scale], f.clicks, api_visibility="private")
    request = [owner, f.image, f.adapter, f.backbone, task, f.classes, f.clicks]
    api_endpoint(predict, request, [f.main, f.extra, f.over, f.info], "predict")
    f.run.click(
        in_page(predict_in_page, 5), request, [f.main, f.extra, f.over, f.info, f.msg], api_visibility="private"
    )
    choice = [owner, f.adapter, f.backbone, task, f.classes, f.clicks]
    for trigger in (f.adapter.change, f.backbone.change, task.change, f.classes.change, f.clicks.change):
        trigger(lambda *a: what_runs(studio, *a), choice, f.runs, api_visibility="private", show_progress="hidden")


def what_runs(studio: Studio, owner, adapter, backbone, task, classes, clicks) -> str:
    """The line beside Predict that says plainly what will run: the model (an adapter of this
    browser, or a frozen backbone), the task, and its classes or clicks; or why it will not run
    (an adapter trained for another task is refused by the studio too)."""
    if task not in TASKS:
        return ""
    kind = TASKS[task]
    title = kind.title.split(" (")[0].lower()
    if adapter:
        fitting = {ref: label for label, ref in studio.adapters(owner, task)} if valid_owner(owner or "") else {}
        if adapter not in fitting:
            return f"**Will not run:** adapter {adapter[:16]} is not for the {title} task: choose another, or none."
        model = f"adapter {fitting[adapter]}"
    else:
        model = f"frozen {backbone}"
    try:
        if kind.mask.needs_class_names:
            names = parse_classes(classes, background=False)
            detail = f"{len(names)} classes" if names else ("the adapter's classes" if adapter else "no classes given")
        else:
            points = parse_clicks(clicks)
            detail = f"{len(points[0])} click(s)" if points is not None else "no clicks"
    except UserError as e:
        return f"**Will not run:** {e}"
    return f"Runs: {model}, {title}, {detail}"
