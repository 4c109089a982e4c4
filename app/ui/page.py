"""The studio's page: Data -> Train -> Progress -> Preview -> Label the rest -> Adapters (+ the method explorer).

Only layout and wiring live here; every action is a call into app.studio (or app.labeller).
Events that make up the public API are named (api_name); the rest are private. The browser keeps
an owner token and the current job id (BrowserState, and the job id in the URL as ?job=), so a
reload or a second tab re-attaches to the running job.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import gradio as gr
import pandas as pd

from adapt.backbones import BACKBONES, family_of
from adapt.methods import METHODS, methods_for
from adapt.tasks import TASKS
from app import labeller
from app.config import JobFiles, Paths, default_root
from app.jobs import new_token
from app.progress import read_progress
from app.studio import (
    Studio,
    UserError,
    backbone_status,
    backbones_for,
    describe_method,
    download_weights,
    estimate_memory,
    family_for_task,
    gpu_count,
)
from app.ui.common import (
    REPO,
    adapter_choices,
    example_path,
    examples,
    model_pickers,
    outbox,
    read_rgb,
    user_errors,
    valid_owner,
)
from app.ui.label_rest import label_tab
from app.ui.labeller import data_tab

TASK_LABELS = {
    "dichotomous": "Dichotomous (SAM: one foreground mask)",
    "openvocab": "Open-vocabulary (CLIP: label map of named classes)",
}
# What a newcomer should know before the first preview: weights/manifest.json (tiny-sam's held-out
# box IoU per domain; tiny-clip's zero-shot colour accuracy on object patches) and
# docs/benchmarks.md (bench/openvocab.py: what tiny-clip knows, with colour and shape names)
BUNDLED_NOTE = (
    "*The bundled `tiny-sam` and `tiny-clip` are small demo models trained on this project's synthetic "
    "scenes: they run offline on a CPU in seconds to show the whole loop, not to segment real photos. "
    "`tiny-sam` segments a boxed object in scenes like `shapes.jpg` (held-out IoU 0.80) and fails on "
    "`camouflage.jpg` (0.10) until adapted, which is the demo. `tiny-clip` names the colour of objects "
    "(`colours.jpg` with classes like `red object`: 95% of object patches right on its training domain) "
    "but hardly knows shapes until it is adapted on a few labelled images. For real images choose an "
    "official SAM or CLIP backbone (downloaded on first use; a GPU is advised).*"
)
# the open-vocabulary preview's default classes: the objects of assets/examples/colours.jpg, which
# the bundled tiny-clip tells apart zero-shot (see assets/examples/README.md)
EXAMPLE_CLASSES = "background, red object, cyan object, yellow object, white object"
TASK_CHOICES = [(TASK_LABELS.get(name, name), name) for name in TASKS]
URL_JS = """(job) => { const u = new URL(window.location.href);
  if (job) { u.searchParams.set('job', job); } else { u.searchParams.delete('job'); }
  window.history.replaceState(null, '', u); return job; }"""
CSS = ".studio-msg p {margin: 0.2em 0}"
# fixed up front: a plot first drawn with no data would otherwise keep an empty colour legend
SERIES_COLORS = {
    f"{k} {m}": c
    for k, pair in {
        "iou": ("#1f77b4", "#9ecae1"),
        "dice": ("#ff7f0e", "#fdd0a2"),
        "miou": ("#2ca02c", "#a1d99b"),
        "pixel_acc": ("#9467bd", "#dadaeb"),
    }.items()
    for m, c in zip(("adapted", "frozen"), pair)
}


def build(studio: Studio | None = None) -> gr.Blocks:
    studio = studio or Studio(Paths(default_root()))
    secret = studio.paths.browser_secret()
    with gr.Blocks(title="Segmentation adaptation studio") as demo:
        saved_owner = gr.BrowserState(None, storage_key="adapt-studio-owner", secret=secret)
        saved_job = gr.BrowserState("", storage_key="adapt-studio-job", secret=secret)
        owner = gr.Textbox(label="owner", elem_id="owner", visible=False)  # the browser's token; an API input
        gr.Markdown(
            "# Segmentation adaptation studio\n"
            "Label or upload a few images, adapt SAM or CLIP with a parameter-efficient method in the "
            "background, compare frozen vs adapted on held-out images, download the adapter.\n\n"
            f"{BUNDLED_NOTE}"
        )
        task = gr.Radio(TASK_CHOICES, value="dichotomous", label="Task", elem_id="task")
        with gr.Tabs() as tabs:
            data = data_tab(studio, owner, task)
            train = _train_tab(studio, owner, task, data, tabs)
            with gr.Tab("3. Progress", id="progress"):
                progress_area = gr.Column()
            preview = _preview_tab(studio, owner, task)
            rest = label_tab(studio, owner, task, data, tabs, train["job"])
            adapters = _adapters_tab(studio, owner, preview)
            with progress_area:
                progress = _progress_tab(studio, owner, train["job"], preview["adapter"])
            _methods_tab()
        _api(studio)
        for fn in rest["api"]:
            gr.api(fn, api_name=fn.__name__, queue=False)

        def on_load(stored_owner, stored_job, request: gr.Request):
            ok = isinstance(stored_owner, str) and bool(stored_owner) and valid_owner(stored_owner)
            token = stored_owner if ok else new_token()
            job = (request.query_params.get("job") if request else None) or stored_job or ""
            return token, token, job

        demo.load(on_load, [saved_owner, saved_job], [owner, saved_owner, train["job"]], api_visibility="private").then(
            lambda o, j: (_job_choices(studio, o, j),) + adapters["lists"](o, j),
            [owner, train["job"]],
            [progress["jobs"], adapters["chosen"], preview["adapter"]],
            api_visibility="private",
        )
        train["job"].change(lambda j: j, train["job"], saved_job, api_visibility="private")
        train["job"].change(None, train["job"], None, js=URL_JS, api_visibility="private")
        task.change(
            lambda t: _on_task(t),
            task,
            [
                data["classes"],
                data["lab_class"],
                train["backbone"],
                preview["classes"],
                preview["backbone"],
                rest["classes"],
                rest["backbone"],
            ],
            api_visibility="private",
        )
    demo.studio = studio
    return demo


def _on_task(task: str):
    openvocab = task == "openvocab"
    names = backbones_for(task)
    return (
        gr.Textbox(visible=openvocab),
        gr.Dropdown(visible=openvocab),
        gr.Dropdown(choices=names, value=names[0]),
        gr.Textbox(visible=openvocab),
        gr.Dropdown(choices=names, value=names[0]),
        gr.Textbox(visible=openvocab),
        gr.Dropdown(choices=names, value=names[0]),
    )


def _job_choices(studio: Studio, owner: str, current: str = ""):
    try:
        jobs = studio.jobs(owner)
    except UserError:
        jobs = []
    choices = [
        (
            f"{time.strftime('%m-%d %H:%M', time.localtime(j['created']))} {j['method']} on {j['backbone']}: "
            f"{j['status']}",
            j["job"],
        )
        for j in jobs
    ]
    return gr.Dropdown(choices=choices, value=current if current in [j["job"] for j in jobs] else None)


# --- Train ---------------------------------------------------------------------------------------


def _train_tab(studio: Studio, owner, task, data: dict, tabs) -> dict:
    with gr.Tab("2. Train", id="train"):
        with gr.Row():
            backbone = gr.Dropdown(
                backbones_for("dichotomous"),
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
        with gr.Row():
            # no precision/minimum here: the service checks every value and says what is wrong
            steps = gr.Number(100, label="Steps", elem_id="steps")
            batch = gr.Number(2, label="Batch size", elem_id="batch")
            lr = gr.Number(1e-3, label="Learning rate (adapter)", elem_id="lr")
            head_lr = gr.Number(1e-4, label="Learning rate (head)", elem_id="head-lr")
            budget = gr.Textbox(
                "",
                label="Memory budget (optional, e.g. 16GB)",
                placeholder="the GPU's free memory",
                max_length=32,
                elem_id="budget",
            )
            gpus = gr.Number(
                1,
                label=f"GPUs (data parallel, up to {gpu_count()})",
                minimum=1,
                maximum=max(1, gpu_count()),
                precision=0,
                visible=gpu_count() > 1,  # shown on machines with more than one GPU
                elem_id="gpus",
            )
        memory_md = gr.Markdown(estimate_memory(backbone.value, "parser", 2), elem_id="memory")
        dataset = gr.File(
            label="Training data: a checked dataset zip (from the Data tab, or upload one)",
            file_types=[".zip"],
            elem_id="dataset",
        )
        train = gr.Button("Train", variant="primary", elem_id="train")
        train_msg = gr.Markdown(elem_id="train-msg", elem_classes="studio-msg")
        job = gr.Textbox(label="job", visible=False)

    @user_errors
    def check_data(owner, task, dataset_zip, images, masks, classes):
        """Validate uploaded pairs; a bad upload is a message that stays in the page (and the API's error)."""
        try:
            dest, summary = studio.stage_upload(
                owner, task, zip_file=dataset_zip, images=images or (), masks=masks or (), classes=classes
            )
        except UserError as e:
            return None, f"**Cannot use this upload.**\n\n```\n{e}\n```", gr.skip()
        return str(dest), f"Checked: ready to train.\n\n{summary}", gr.Tabs(selected="train")

    @user_errors
    def submit(owner, dataset, task, backbone, method, steps, lr, head_lr, batch_size, budget="", gpus=1):
        job_id = studio.submit(
            owner, dataset, task, backbone, method, steps, lr, head_lr, batch_size, memory_budget=budget, gpus=gpus
        )
        return job_id, f"Job `{job_id}` queued."

    def on_backbone(bb, t):
        family = TASKS[t].family if t in TASKS else "sam"
        choices = methods_for(family)
        return backbone_status(bb), gr.Dropdown(choices=choices, value=choices[0])

    @user_errors
    def fetch_weights(bb, progress=gr.Progress(track_tqdm=True)):
        return download_weights(bb)

    data["check"].click(
        check_data,
        [owner, task, data["zip"], data["images"], data["masks"], data["classes"]],
        [dataset, data["msg"], tabs],
        api_name="check_data",
    )
    data["use_set"].click(data["use_labelled"], [owner, task], [dataset, data["msg"], tabs], api_visibility="private")
    backbone.change(on_backbone, [backbone, task], [weights_md, method], api_visibility="private")
    fetch.click(fetch_weights, backbone, weights_md, api_visibility="private")
    for trigger in (backbone.change, method.change, batch.change):
        trigger(lambda bb, m: describe_method(bb, m)[0], [backbone, method], method_md, api_visibility="private")
    for trigger in (backbone.change, method.change, batch.change, budget.blur, budget.submit):
        trigger(estimate_memory, [backbone, method, batch, budget], memory_md, api_visibility="private")
    train.click(
        submit,
        [owner, dataset, task, backbone, method, steps, lr, head_lr, batch, budget, gpus],
        [job, train_msg],
        api_name="train",
    ).success(lambda: gr.Tabs(selected="progress"), None, tabs, api_visibility="private")
    return {"job": job, "backbone": backbone}


# --- Progress ------------------------------------------------------------------------------------


def _progress_tab(studio: Studio, owner, job, adapter_choice) -> dict:
    # laid out inside the Progress tab (built after the Preview tab, whose adapter list it updates)
    with gr.Column():
        with gr.Row():
            jobs = gr.Dropdown([], label="My jobs", elem_id="jobs", scale=3)
            job_view = gr.Textbox(label="Job id", elem_id="job-id", scale=3)
            cancel = gr.Button("Cancel job", variant="stop", scale=1, elem_id="cancel")
            resume = gr.Button("Resume", scale=1, elem_id="resume")  # a failed job, from its checkpoint
        status_md = gr.Markdown("No job yet: start one in the Train tab.", elem_id="job-status")
        with gr.Row():
            loss_plot = gr.LinePlot(x="step", y="loss", title="Training loss", height=260, elem_id="loss-plot")
            metric_plot = gr.LinePlot(
                x="step",
                y="score",
                color="series",
                title="Held-out metrics",
                height=260,
                color_map=SERIES_COLORS,
                elem_id="metric-plot",
            )
        with gr.Row():
            preview = gr.Image(
                label="Held-out images: truth | prediction (refreshes as training goes)",
                interactive=False,
                format="png",
                height=360,
                elem_id="preview",
            )
            slider = gr.ImageSlider(label="Before (frozen) / after (adapted)", format="png", elem_id="before-after")
        scores = gr.Markdown(elem_id="scores")
        log = gr.Textbox(label="Log", lines=8, max_lines=12, elem_id="log")
        with gr.Row():
            merged = gr.Checkbox(
                False, label="merged checkpoint (base + adapter in one .safetensors) instead of the adapter zip"
            )
            get = gr.Button("Download", elem_id="download")
            out_file = gr.File(label="Download", elem_id="download-file")
        seen = gr.State(None)
        timer = gr.Timer(1.5)

    def refresh(o, job_id, last):
        if not job_id or not valid_owner(o or ""):
            return (None,) + (gr.skip(),) * 10
        try:
            s = studio.status(o, job_id)
        except UserError as e:
            return (None, f"**{e}**") + (gr.skip(),) * 9
        job_files = studio.paths.job_files(s["job"])
        p = read_progress(job_files.folder)
        pictures = (job_files.after, job_files.preview, job_files.before)  # the newest first
        stamps = tuple(f.stat().st_mtime_ns if f.exists() else 0 for f in pictures)
        signature = (s["job"], s["status"], s["error"], p.signature, stamps)
        if signature == last:
            return (last,) + (gr.skip(),) * 10
        curves = p.curves()
        # explicit dtypes, so that the axes are quantitative
        loss_df = pd.DataFrame(curves["loss"], columns=["step", "loss"]).astype({"step": int, "loss": float})
        metric_df = pd.DataFrame(curves["metric"], columns=["step", "score", "series"]).astype(
            {"step": int, "score": float, "series": str}
        )
        shown = next((im for im in map(read_rgb, pictures) if im is not None), None)
        before = read_rgb(JobFiles.predictions(job_files.before))
        after = read_rgb(JobFiles.predictions(job_files.after))
        # None until the adapted model has a score: gradio's plot keeps the series (and legend) of its
        # first draw, so that draw must hold both the frozen and the adapted lines
        return (
            signature,
            _status_text(s),
            loss_df if len(loss_df) else None,
            metric_df if metric_df["series"].str.contains("adapted").any() else None,
            shown,
            (before, after) if before is not None and after is not None else None,
            _scores(s["frozen"], s["adapted"], s.get("warning"), s.get("best_step")),
            "\n".join(p.log),
            s["job"],
            adapter_choices(studio, o, s["job"]) if s["adapter_ready"] else gr.skip(),
            _job_choices(studio, o, s["job"]),
        )

    @user_errors
    def do_cancel(owner, job):
        return studio.cancel(owner, job)

    @user_errors
    def do_resume(owner, job):
        return studio.resume(owner, job)

    @user_errors
    def download(owner, job, merged):
        if merged:
            return outbox(studio.merged_checkpoint(owner, job), f"merged-{job[:8]}.safetensors")
        return outbox(studio.adapter_zip(owner, job), f"adapter-{job[:8]}.zip")

    outputs = [seen, status_md, loss_plot, metric_plot, preview, slider, scores, log, job_view, adapter_choice, jobs]
    timer.tick(refresh, [owner, job, seen], outputs, api_visibility="private", show_progress="hidden")
    job.change(refresh, [owner, job, gr.State(None)], outputs, api_visibility="private")
    jobs.input(lambda j: j, jobs, job, api_visibility="private")
    job_view.submit(lambda j: j.strip(), job_view, job, api_visibility="private")
    job.change(lambda o, j: _job_choices(studio, o, j), [owner, job], jobs, api_visibility="private")
    cancel.click(do_cancel, [owner, job_view], status_md, api_name="cancel")
    resume.click(do_resume, [owner, job_view], status_md, api_name="resume")
    get.click(download, [owner, job_view, merged], out_file, api_name="download")
    return {"jobs": jobs}


def _status_text(s: dict) -> str:
    head = f"**Job `{s['job']}`**: {s['method']} on {s['backbone']} ({s['task']}): **{s['status']}**"
    if s["status"] == "queued":
        head += f", {s.get('queue_position', 0)} job(s) ahead"
    if s["step"]:
        head += f"; step {s['step']} / {s['steps']}"
    if s["loss"] is not None:
        head += f", loss {s['loss']:.4f}"
    if s["status"] == "running" and s["eta_s"] is not None:
        head += f", about {s['eta_s']:.0f} s left"
    if s["note"] and s["status"] in ("queued", "running"):
        head += f"\n\n_{s['note']}_"
    if s["error"]:
        head += f"\n\n**Error:**\n```\n{s['error']}\n```"
    if s["adapter_ready"]:
        head += "\n\nThe adapter is ready: *Download* below, or try it in the Preview tab."
    return head


def _scores(frozen: dict | None, adapted: dict | None, warning: str | None = None, best: int | None = None) -> str:
    if not frozen:
        return ""
    keys = [k for k, v in frozen.items() if isinstance(v, float)][:8]
    rows = ["| held-out | frozen | adapted |", "|---|---|---|"]
    for k in keys:
        a = adapted.get(k) if adapted else None
        rows.append(f"| {k} | {frozen[k]:.4f} | {a:.4f} |" if isinstance(a, float) else f"| {k} | {frozen[k]:.4f} | |")
    if best is not None:
        rows.append(f"\nThe adapter is the state of step {best}, the best on the validation images.")
    if warning:
        rows.append(f"\n**Warning.** {warning}")
    return "\n".join(rows)


# --- Preview -------------------------------------------------------------------------------------


def _preview_tab(studio: Studio, owner, task) -> dict:
    with gr.Tab("4. Preview", id="preview"):
        with gr.Row():
            with gr.Column():
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
                    mode = gr.Radio(
                        ["foreground point", "background point"], value="foreground point", label="Click adds"
                    )
                    clicks = gr.Textbox(
                        label="clicks", placeholder="x,y,label; ... (label 1 object, 0 background)", elem_id="clicks"
                    )
                adapter, backbone = model_pickers(
                    "adapter", "predict-backbone", "backbone (used when no adapter is chosen)"
                )
                classes = gr.Textbox(
                    EXAMPLE_CLASSES,
                    label="classes (with tiny-clip: colour names, as for colours.jpg)",
                    placeholder="background, sky, road, car",
                    visible=False,
                    elem_id="predict-classes",
                )
                run = gr.Button("Predict", variant="primary", elem_id="predict")
            with gr.Column():
                main = gr.Image(label="Mask / label map (full resolution)", format="png", elem_id="predict-main")
                extra = gr.Image(label="Cut-out / legend", format="png", image_mode=None, elem_id="predict-extra")
                over = gr.Image(label="Overlay", format="png", elem_id="predict-overlay")
                info = gr.Markdown(elem_id="predict-info")
        scale = gr.State(1.0)

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

    @user_errors
    def predict(owner, image, adapter, backbone, task, classes, clicks):
        outputs, desc = studio.predict(owner, image, adapter, backbone, task, classes, clicks)
        second = outputs.get("cutout", outputs.get("legend"))
        return outputs["main"], second, outputs["overlay"], desc

    image.upload(show, image, [view, scale, clicks], api_visibility="private")
    example.input(pick, example, [image, view, scale, clicks], api_visibility="private")
    view.select(add_click, [clicks, mode, scale], clicks, api_visibility="private")
    run.click(
        predict, [owner, image, adapter, backbone, task, classes, clicks], [main, extra, over, info], api_name="predict"
    )
    return {"adapter": adapter, "classes": classes, "backbone": backbone}


# --- Adapters ------------------------------------------------------------------------------------


def _adapters_tab(studio: Studio, owner, preview: dict) -> dict:
    with gr.Tab("6. Adapters", id="adapters"):
        gr.Markdown(
            "Your finished adapters (and any you load) can be downloaded, and used in the Preview tab. "
            "An adapter zip holds adapter_config.json, adapter_model.safetensors and a model card; "
            "nothing in it is ever unpickled."
        )
        with gr.Row():
            chosen = gr.Dropdown([], label="My adapters", elem_id="my-adapters", scale=3)
            refresh = gr.Button("Refresh", size="sm", scale=0)
        with gr.Row():
            as_zip = gr.Button("Adapter zip")
            as_merged = gr.Button("Merged checkpoint (.safetensors)")
        out_file = gr.File(label="Download", elem_id="adapter-file")
        upload = gr.File(label="Load an adapter zip", file_types=[".zip"], elem_id="adapter-upload")
        load = gr.Button("Load adapter", elem_id="load-adapter")
        with gr.Accordion("Hugging Face Hub", open=False):
            gr.Markdown(
                "Share the chosen adapter as a Hub model repository (its three files and the model card), "
                "or load one. The token is used for the upload only: it is never stored or logged."
            )
            with gr.Row():
                hub_repo = gr.Textbox(label="Repository (user/name)", max_lines=1, max_length=200, elem_id="hub-repo")
                hub_token = gr.Textbox(
                    label="Write token", type="password", max_lines=1, max_length=400, elem_id="hub-token"
                )
                hub_private = gr.Checkbox(label="Private", value=True)
            with gr.Row():
                push = gr.Button("Push to Hub", elem_id="push-hub")
                pull = gr.Button("Load from Hub", elem_id="load-hub")
        msg = gr.Markdown(elem_id="adapter-msg", elem_classes="studio-msg")
        loaded = gr.Textbox(label="adapter", visible=False)

    @user_errors
    def get(o, ref, merged):
        if not ref:
            raise UserError("choose an adapter first")
        if ref.startswith("upload-"):
            if merged:
                raise UserError("merged checkpoints are made from your own training jobs")
            return outbox(studio._adapter_path(o, ref), f"{ref}.zip")
        return (
            outbox(studio.merged_checkpoint(o, ref), f"merged-{ref[:8]}.safetensors")
            if merged
            else outbox(studio.adapter_zip(o, ref), f"adapter-{ref[:8]}.zip")
        )

    @user_errors
    def load_adapter(owner, adapter_zip):
        ref, desc = studio.upload_adapter(owner, adapter_zip)
        return ref, f"Loaded {desc}. It is now in the adapter lists (Preview tab)."

    @user_errors
    def push_hub(owner, ref, repo, token, private):
        url = studio.push_adapter(owner, ref, repo, token, private)
        return f"Pushed to [{url}]({url}).", ""  # the token field is cleared

    @user_errors
    def load_hub(owner, repo):
        ref, desc = studio.load_hub_adapter(owner, repo)
        return ref, f"Loaded {desc} from the Hub. It is now in the adapter lists (Preview tab)."

    def lists(owner, job=""):
        """Both adapter lists; the current job's adapter is chosen when it has one."""
        items = studio.adapters(owner) if valid_owner(owner or "") else []
        value = job if job in [ref for _, ref in items] else ""
        return gr.Dropdown(choices=items, value=value or None), adapter_choices(studio, owner, value)

    refresh.click(lists, owner, [chosen, preview["adapter"]], api_visibility="private")
    as_zip.click(lambda o, r: get(o, r, False), [owner, chosen], out_file, api_visibility="private")
    as_merged.click(lambda o, r: get(o, r, True), [owner, chosen], out_file, api_visibility="private")
    push.click(push_hub, [owner, chosen, hub_repo, hub_token, hub_private], [msg, hub_token], api_visibility="private")
    for event in (
        load.click(load_adapter, [owner, upload], [loaded, msg], api_name="load_adapter"),
        pull.click(load_hub, [owner, hub_repo], [loaded, msg], api_visibility="private"),
    ):
        event.success(
            lambda o, v: (gr.Dropdown(choices=studio.adapters(o), value=v), adapter_choices(studio, o, v)),
            [owner, loaded],
            [chosen, preview["adapter"]],
            api_visibility="private",
        )
    return {"chosen": chosen, "lists": lists}


# --- Methods (the explorer) ----------------------------------------------------------------------


FEWSHOT_FIGURE = REPO / "docs" / "img" / "fewshot-params-dice.png"  # bench/fewshot_sam.py --plot


def _methods_tab() -> None:
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


# --- API-only endpoints --------------------------------------------------------------------------


def _api(studio: Studio) -> None:
    # async: answered on the server's event loop (a millisecond of SQLite and a stat), with no hop
    # to a worker thread
    @user_errors
    async def status(owner: str, job: str) -> dict:
        """A job's state: status, step / steps, loss, eta_s, frozen and adapted held-out metrics, error."""
        return studio.status(owner, job)

    @user_errors
    async def jobs(owner: str) -> list:
        """This owner's jobs, newest first."""
        return studio.jobs(owner)

    @user_errors
    def tasks() -> dict:
        """Which tasks this server can train, with their backbones and methods."""
        return {
            t: {"available": True, "backbones": backbones_for(t), "methods": methods_for(family_for_task(t))}
            for t in TASKS
        }

    # reads of the job store and a stat of the events file: answered at once, outside the queue
    # (which orders the heavy work: training submissions, predictions), with no concurrency cap
    for fn in (status, jobs, tasks):
        gr.api(fn, api_name=fn.__name__, queue=False, concurrency_limit=None)


__all__ = ["build", "METHODS"]
