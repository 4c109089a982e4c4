"""The studio's page: Data -> Train -> Progress -> Preview -> Label the rest -> Adapters (+ the
method explorer), one module per tab (app/ui/<tab>.py); here they are assembled and tied together.

Only layout and wiring live in app/ui; every action is a call into app.studio (or app.labeller,
app.label_rest), every choice comes from app.catalog. Events that make up the public API are named
(api_name); the rest are private. The browser keeps an owner token and the current job id
(BrowserState, and the job id in the URL as ?job=), so a reload or a second tab re-attaches to the
running job.
"""

from __future__ import annotations

import gradio as gr

from adapt.tasks import TASKS
from app.catalog import backbone_choices
from app.config import Paths, default_root
from app.jobs import new_token
from app.studio import Studio
from app.ui.adapters import adapters_tab
from app.ui.api import api_endpoints
from app.ui.common import adapter_choices, owners_checked, valid_owner
from app.ui.label_rest import label_tab
from app.ui.labeller import data_tab
from app.ui.labelstudio import labelstudio_tab
from app.ui.methods import methods_tab
from app.ui.preview import preview_tab
from app.ui.progress import job_choices, progress_tab
from app.ui.train import train_tab

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
TASK_CHOICES = [(cls.title, name) for name, cls in TASKS.items()]
URL_JS = """(job) => { const u = new URL(window.location.href);
  if (job) { u.searchParams.set('job', job); } else { u.searchParams.delete('job'); }
  window.history.replaceState(null, '', u); return job; }"""
CSS = ".studio-msg p {margin: 0.2em 0}"


def build(studio: Studio | None = None) -> gr.Blocks:
    studio = studio or Studio(Paths(default_root()))
    secret = studio.paths.browser_secret()
    # what the page hands out (and what users upload) is removed from Gradio's cache after a while
    with gr.Blocks(title="Segmentation adaptation studio", delete_cache=studio.limits.served_files) as demo:
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
            train = train_tab(studio, owner, task, data, tabs)
            with gr.Tab("3. Progress", id="progress"):
                progress_area = gr.Column()
            preview = preview_tab(studio, owner, task)
            rest = label_tab(studio, owner, task, data, tabs, train["job"])
            adapters = adapters_tab(studio, owner, task, preview)
            with progress_area:
                progress = progress_tab(studio, owner, train["job"], preview["adapter"], task)
            methods_tab()
            labelstudio = labelstudio_tab(studio, owner, task)
        api_endpoints(studio, rest["api"])
        _remember_the_browser(
            studio, demo, (owner, saved_owner, saved_job, task, tabs), train["job"], progress, adapters
        )
        task.change(
            lambda t, o, chosen: _on_task(t) + (adapter_choices(studio, o, chosen, t),) * 2,
            [task, owner, preview["adapter"]],
            [
                data["classes"],
                data["lab_class"],
                train["backbone"],
                preview["classes"],
                preview["backbone"],
                rest["classes"],
                rest["backbone"],
                preview["adapter"],
                labelstudio["adapter"],
            ],
            api_visibility="private",
        )
        owners_checked(demo, owner)  # last: every event above that takes the owner checks it first
    demo.studio = studio
    return demo


def _remember_the_browser(studio: Studio, demo, browser: tuple, job, progress, adapters):
    """On load: the browser's owner token (a new one the first time) and its current job (from the
    URL's ?job= or the browser's storage), then its job and adapter lists; a URL naming one of its
    jobs opens the Progress tab on it. The job id follows the current job into storage and the URL."""
    owner, saved_owner, saved_job, task, tabs = browser

    def on_load(stored_owner, stored_job, request: gr.Request):
        ok = isinstance(stored_owner, str) and bool(stored_owner) and valid_owner(stored_owner)
        token = stored_owner if ok else new_token()
        asked = (request.query_params.get("job") if request else None) or ""
        current = asked or stored_job or ""
        mine = asked and asked in [j["job"] for j in studio.jobs(token)]
        return token, token, current, gr.Tabs(selected="progress") if mine else gr.skip()

    demo.load(on_load, [saved_owner, saved_job], [owner, saved_owner, job, tabs], api_visibility="private").then(
        lambda o, j, t: (job_choices(studio, o, j),) + adapters["lists"](o, j, t),
        [owner, job, task],
        [progress["jobs"], adapters["chosen"], adapters["preview"]],
        api_visibility="private",
    )
    job.change(lambda j: j, job, saved_job, api_visibility="private")
    job.change(None, job, None, js=URL_JS, api_visibility="private")


def _on_task(task: str):
    """A task shows the class-name fields when its masks are maps of named classes, and offers its
    backbones, each saying whether its weights are on disk (in the Train, Preview and Label-the-rest
    tabs)."""
    names = backbone_choices(task)  # checks the task
    named = TASKS[task].mask.needs_class_names
    return (
        gr.Textbox(visible=named),
        gr.Dropdown(visible=named),
        gr.Dropdown(choices=names, value=names[0][1]),
        gr.Textbox(visible=named),
        gr.Dropdown(choices=names, value=names[0][1]),
        gr.Textbox(visible=named),
        gr.Dropdown(choices=names, value=names[0][1]),
    )


__all__ = ["CSS", "build"]
