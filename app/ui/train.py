"""The studio's Train tab: the backbone, the method and what it trains, the run's settings and
memory plan, and the Train button (actions in app.studio; choices from app.catalog)."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from adapt.methods import methods_for
from adapt.tasks import TASKS
from app.catalog import backbone_choices, backbone_status, backbones_for, describe_method, download_weights
from app.studio import Studio, UserError, estimate_memory, gpu_count
from app.ui.common import outbox, user_errors
from app.ui.messages import api_endpoint, in_page, message


def train_tab(studio: Studio, owner, task, data: dict, tabs) -> dict:
    """The tab, wired to the Data tab's checks (their result is the training data) and to the tabs."""
    with gr.Tab("2. Train", id="train"):
        form = _model_choice()
        _run_settings(form)
        _task_settings(form)
        form.dataset = gr.File(  # filled by the Data tab's checks: /train reads only this browser's own copy
            label="Training data: the dataset checked in the Data tab",
            file_types=[".zip"],
            interactive=False,
            elem_id="dataset",
        )
        form.train = gr.Button("Train", variant="primary", elem_id="train")
        form.msg = message("train-msg")
        form.job = gr.Textbox(label="job", visible=False)
        _wire_train(studio, owner, task, tabs, form)  # in the tab: its hidden API trigger too
    _wire_data(studio, owner, task, data, tabs, form)
    _wire_choices(task, form)
    return {"job": form.job, "backbone": form.backbone}


def _model_choice() -> SimpleNamespace:
    """Backbone and method, whether the weights are here, and what the method trains."""
    with gr.Row():
        backbone = gr.Dropdown(
            backbone_choices("dichotomous"),  # each saying whether its weights are on disk
            value=backbones_for("dichotomous")[0],
            label="Backbone",
            elem_id="backbone",
            allow_custom_value=True,
        )  # the API may name any backbone; submit() checks it
        method = gr.Dropdown(
            methods_for("sam"), value="parser", label="Method", elem_id="method", allow_custom_value=True
        )
    with gr.Row():
        weights_md = gr.Markdown(backbone_status(backbone.value), elem_classes="studio-msg")
        fetch = gr.Button("Download weights", size="sm", scale=0)
    method_md = gr.Markdown(describe_method(backbone.value, "parser")[0], elem_id="method-info")
    return SimpleNamespace(backbone=backbone, method=method, weights_md=weights_md, fetch=fetch, method_md=method_md)


def _run_settings(form: SimpleNamespace) -> None:
    """Steps, batch, learning rates, memory budget and GPUs, with the memory plan they give."""
    with gr.Row():
        # no precision/minimum here: the service checks every value and says what is wrong
        form.steps = gr.Number(100, label="Steps", elem_id="steps")
        form.batch = gr.Number(2, label="Batch size", elem_id="batch")
        form.lr = gr.Number(1e-3, label="Learning rate (adapter)", elem_id="lr")
        form.head_lr = gr.Number(1e-4, label="Learning rate (head)", elem_id="head-lr")
        form.budget = gr.Textbox(
            "",
            label="Memory budget (optional, e.g. 16GB)",
            placeholder="the GPU's free memory",
            max_length=32,
            elem_id="budget",
        )
        form.gpus = gr.Number(
            1,
            label=f"GPUs (data parallel, up to {gpu_count()})",
            minimum=1,
            maximum=max(1, gpu_count()),
            precision=0,
            visible=gpu_count() > 1,  # shown on machines with more than one GPU
            elem_id="gpus",
        )
    form.memory_md = gr.Markdown(estimate_memory(form.backbone.value, "parser", 2), elem_id="memory")


def _task_settings(form: SimpleNamespace) -> None:
    """The options of the tasks that have them (TASKS[t].default_options), shown for those tasks:
    the concept task's phrase (what binary masks' object is called) and hard negatives."""
    with gr.Row():
        form.phrase = gr.Textbox(
            "",
            label="Phrase (binary masks only)",
            placeholder="what the object is called, e.g. cell; a class map names its classes itself",
            max_length=60,
            visible=False,
            elem_id="phrase",
        )
        form.hard_negatives = gr.Checkbox(
            True,
            label="Hard negatives",
            info="Also train on phrases of classes absent from an image, so the model keeps saying no",
            visible=False,
            elem_id="hard-negatives",
        )


def task_options_shown(task: str) -> tuple:
    """The phrase and hard-negatives fields, shown when the task has the option."""
    options = TASKS[task].default_options if task in TASKS else {}
    return gr.Textbox(visible="phrase" in options), gr.Checkbox(visible="hard_negatives" in options)


def _wire_data(studio: Studio, owner, task, data: dict, tabs, form: SimpleNamespace) -> None:
    """The Data tab's checks fill in the training data and bring the user here."""

    @user_errors
    def check_data(owner, task, dataset_zip, images, masks, classes):
        """Validate uploaded pairs; a bad upload is a message that stays in the page (and the API's error).
        The answer is the checked dataset, a file named after its id, which /train takes back."""
        try:
            dest, summary = studio.stage_upload(
                owner, task, zip_file=dataset_zip, images=images or (), masks=masks or (), classes=classes
            )
        except UserError as e:
            return None, f"**Cannot use this upload.**\n\n```\n{e}\n```", gr.skip()
        return outbox(dest, dest.name), f"Checked: ready to train.\n\n{summary}", gr.Tabs(selected="train")

    data["check"].click(
        check_data,
        [owner, task, data["zip"], data["images"], data["masks"], data["classes"]],
        [form.dataset, data["check_msg"], tabs],
        api_name="check_data",
    )
    data["use_set"].click(
        data["use_labelled"], [owner, task], [form.dataset, data["set_msg"], tabs], api_visibility="private"
    )


def _wire_choices(task, form: SimpleNamespace) -> None:
    """A backbone brings its family's methods and weights status; every choice updates the method's
    description and the memory plan."""

    def on_backbone(bb, t):
        family = TASKS[t].family if t in TASKS else "sam"
        choices = methods_for(family)
        return backbone_status(bb), gr.Dropdown(choices=choices, value=choices[0])

    @user_errors
    def fetch_weights(bb, progress=gr.Progress(track_tqdm=True)):
        return download_weights(bb)

    form.backbone.change(on_backbone, [form.backbone, task], [form.weights_md, form.method], api_visibility="private")
    task.change(task_options_shown, task, [form.phrase, form.hard_negatives], api_visibility="private")
    form.fetch.click(fetch_weights, form.backbone, form.weights_md, api_visibility="private")
    for trigger in (form.backbone.change, form.method.change, form.batch.change):
        trigger(
            lambda bb, m: describe_method(bb, m)[0],
            [form.backbone, form.method],
            form.method_md,
            api_visibility="private",
        )
    for trigger in (form.backbone.change, form.method.change, form.batch.change, form.budget.blur, form.budget.submit):
        trigger(
            estimate_memory,
            [form.backbone, form.method, form.batch, form.budget],
            form.memory_md,
            api_visibility="private",
        )


def _wire_train(studio: Studio, owner, task, tabs, form: SimpleNamespace) -> None:
    """Train: a queued job opens the Progress tab; a refusal is said beside the button."""

    def submit(
        owner,
        dataset,
        task,
        backbone,
        method,
        steps,
        lr,
        head_lr,
        batch_size,
        budget="",
        gpus=1,
        phrase="",
        hard_negatives=True,
    ):
        data = studio.checked_dataset(owner, dataset)  # this browser's own checked dataset, or refused
        job_id = studio.submit(
            owner,
            str(data),
            task,
            backbone,
            method,
            steps,
            lr,
            head_lr,
            batch_size,
            memory_budget=budget,
            gpus=gpus,
            phrase=phrase,
            hard_negatives=hard_negatives,
        )
        return job_id, f"Job `{job_id}` queued."

    def submit_in_page(*args):
        job_id, text = submit(*args)
        return job_id, gr.Tabs(selected="progress"), text

    request = [owner, form.dataset, task, form.backbone, form.method, form.steps, form.lr, form.head_lr, form.batch]
    request += [form.budget, form.gpus, form.phrase, form.hard_negatives]
    api_endpoint(submit, request, [form.job, form.msg], "train")
    form.train.click(in_page(submit_in_page, 3), request, [form.job, tabs, form.msg], api_visibility="private")
