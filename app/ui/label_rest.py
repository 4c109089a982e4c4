"""The studio's "Label the rest" tab: auto-label unlabelled images with an adapter (a background
job), look at the results most uncertain first, correct a few in the Data tab's click labeller or
accept them, retrain warm-started, download everything (actions in app.label_rest)."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from app import labeller
from app.label_rest import LabelRest
from app.studio import Studio, UserError
from app.ui.common import (
    adapter_choices,
    download_button,
    model_pickers,
    one_click_download,
    outbox,
    text_field,
    text_field_follows,
    user_errors,
    valid_owner,
)
from app.ui.messages import message


def label_tab(studio: Studio, owner, task, data: dict, tabs, train_job) -> dict:
    """The tab; "api" in what it returns: the API-only endpoints it defines (registered outside
    the Tabs, where a gr.api is not drawn as a stray tab)."""
    rest = LabelRest(studio)
    with gr.Tab("5. Label the rest", id="label-rest") as here:
        gr.Markdown(
            "Run an adapter (the one you trained last is chosen) over the rest of your images. The results "
            "come back **most uncertain first**: open one to correct it in the Data tab's labeller (it starts "
            "from the model's mask), or accept it as is; both go to your labelled set, one pair per image, and "
            "are marked here. *Retrain* continues the adapter on its data plus the labelled set, held out on "
            "the same images as that adapter (never trained on), and compares the new adapter with it there. "
            "*Download all* gives the masks as you decided them, a COCO file and the scores with each review."
        )
        with gr.Row():
            with gr.Column(scale=1):
                view = _job_form()
            with gr.Column(scale=2):
                _results(view)
        view.rows = gr.State([])  # the gallery's score rows, in its order
        view.chosen = gr.Textbox(label="result", visible=False)  # the selected result's name (an API input)
        view.shown = gr.State("")  # the job whose results the gallery shows
        view.timer = gr.Timer(2.0)
        view.picked = gr.State(False)  # the user chose an adapter here: the page no longer chooses one
    batch_results = _wire_job(studio, rest, owner, task, tabs, train_job, view)
    _wire_results(studio, rest, owner, data, tabs, view)
    here.select(
        lambda o, j, picked, ref: adapter_choices(studio, o, ref if picked else rest.default_adapter(o, j)),
        [owner, train_job, view.picked, view.adapter],
        view.adapter,
        api_visibility="private",
    )
    view.adapter.input(lambda: True, None, view.picked, api_visibility="private")
    return {"adapter": view.adapter, "backbone": view.backbone, "classes": view.classes, "api": [batch_results]}


def _job_form() -> SimpleNamespace:
    images = gr.File(
        label="Unlabelled images (files, or one zip)",
        file_count="multiple",
        file_types=["image", ".zip"],
        elem_id="rest-upload",
        height=160,
    )
    adapter, backbone = model_pickers("rest-adapter", "rest-backbone", "backbone (when no adapter is chosen)")
    classes = gr.Textbox(label="classes (open-vocabulary, frozen model)", visible=False)
    text = text_field("Text prompt (SAM 3: each mask is every instance of this phrase)", "rest-text")
    run = gr.Button("Label them", variant="primary", elem_id="rest-run")
    return SimpleNamespace(images=images, adapter=adapter, backbone=backbone, classes=classes, text=text, run=run)


def _results(view: SimpleNamespace) -> None:
    with gr.Row():
        view.job = gr.Textbox(label="Labelling job", elem_id="rest-job", scale=3)
        view.cancel = gr.Button("Cancel", variant="stop", scale=1, elem_id="rest-cancel")
    view.status = message("rest-status", "No labelling job yet.")
    view.gallery = gr.Gallery(
        label="Results, most uncertain first: file · rank · uncertainty · ✓ accepted / ✎ corrected (click one)",
        columns=5,
        height=420,
        allow_preview=False,
        object_fit="contain",
        elem_id="rest-gallery",
    )
    view.chosen_md = message("rest-chosen")
    with gr.Row():
        view.accept = gr.Button("Accept as is", elem_id="rest-accept")
        view.correct = gr.Button("Correct in the labeller", elem_id="rest-correct")
        view.download = download_button("Download all (zip)", "rest-download")
    with gr.Row():
        view.steps = gr.Number(100, label="retrain steps", precision=0, minimum=1, elem_id="rest-steps")
        view.retrain = gr.Button("Retrain on the enlarged set", variant="primary", elem_id="rest-retrain")


def _wire_job(studio: Studio, rest: LabelRest, owner, task, tabs, train_job, view: SimpleNamespace):
    """Queue, follow, cancel a labelling job; accept, retrain, download its results. Returns the
    API-only endpoint (the results as data)."""

    @user_errors
    def predict_batch(o, files, ref, bb, t, names, text=""):
        """Queue a labelling job; returns (job id, message). `text`: a SAM 3 model's phrase."""
        job_id = rest.submit(o, files, ref, bb, t, names, text=text)
        return job_id, f"Labelling job `{job_id}` queued; the results appear here when it is done."

    @user_errors
    def batch_results(owner: str, job: str) -> list:
        """A finished labelling job's results, most uncertain first: one dict per image (name, file,
        width, height, uncertainty and the numbers it comes from)."""
        return rest.results(owner, job)[1]

    @user_errors
    def accept_label(o, job_id, name):
        """Save one result's mask, as the model made it, into this browser's labelled set (accepted
        again: the same pair, rewritten)."""
        return f"Saved **{rest.accept(o, job_id, name)}** to the labelled set (Data tab), marked accepted."

    @user_errors
    def retrain_labels(o, job_id, n):
        """Start a training job warm-started from the labelling job's adapter; returns (job id, message)."""
        new = rest.retrain(o, job_id, steps=n)
        return new, (
            f"Retraining as job `{new}` (Progress tab). It is scored on the same held-out images as the adapter "
            "it continues (never trained on), against that previous adapter."
        )

    @user_errors
    def download_labels(o, job_id):
        """The masks, annotations.json (COCO) and scores.csv of a finished labelling job, as one zip."""
        return outbox(rest.download(o, job_id), f"labels-{job_id[:8]}.zip")

    v = view
    v.run.click(
        predict_batch,
        [owner, v.images, v.adapter, v.backbone, task, v.classes, v.text],
        [v.job, v.status],
        api_name="predict_batch",
    )
    text_field_follows(studio, owner, task, v.adapter, v.backbone, v.text)
    v.accept.click(accept_label, [owner, v.job, v.chosen], v.chosen_md, api_name="accept_label").success(
        _redraw(rest), [owner, v.job], [v.status, v.gallery, v.rows], api_visibility="private"
    )
    v.retrain.click(retrain_labels, [owner, v.job, v.steps], [train_job, v.chosen_md], api_name="retrain").success(
        lambda: gr.Tabs(selected="progress"), None, tabs, api_visibility="private"
    )
    one_click_download(v.download, download_labels, [owner, v.job], api_name="download_labels")
    v.cancel.click(user_errors(lambda o, j: studio.cancel(o, j)), [owner, v.job], v.status, api_visibility="private")
    return batch_results


def _wire_results(studio: Studio, rest: LabelRest, owner, data: dict, tabs, view: SimpleNamespace) -> None:
    """The job's state until it is done, then its gallery; a chosen result opens in the Data tab's
    labeller for correction."""

    def poll(o, job_id, loaded):
        """The job's state; the gallery once it is done (loaded once per job)."""
        if not job_id or not valid_owner(o or ""):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            s = studio.status(o, job_id)
        except UserError as e:
            return str(e), gr.skip(), gr.skip(), gr.skip()
        if s.get("kind") != "label":
            return "That is a training job: see the Progress tab.", gr.skip(), gr.skip(), gr.skip()
        if s["status"] != "done":
            eta = f", about {s['eta_s']:.0f} s left" if s["status"] == "running" and s["eta_s"] else ""
            error = f": {s['error']}" if s["error"] else ""
            return f"**{s['status']}**: {s['step']} / {s['steps']} images{eta}{error}", gr.skip(), gr.skip(), gr.skip()
        if loaded == job_id:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        items, scored, text = rest.results(o, job_id)
        return text, items, scored, job_id

    def select(scored, evt: gr.SelectData):
        if not scored or evt.index is None or evt.index >= len(scored):
            return gr.skip(), gr.skip()
        r = scored[evt.index]
        review = f", {r['review']}" if r.get("review") else ""
        return r["name"], f"Chosen: **{r['file']}** (#{r['rank']}, uncertainty {r['uncertainty']:.2f}{review})"

    @user_errors
    def open_correction(o, job_id, name):
        if not name:
            raise UserError("click a result in the gallery first")
        state = rest.correction(o, job_id, name)
        shown_image = labeller.render(state, len(rest.classes(o, job_id)))
        message = (
            f"Correcting **{state['name']}**, starting from the model's mask: click to propose and *Add region*, "
            "or fix it with the brush; then *Save pair to set*."
        )
        return state, shown_image, message, gr.Tabs(selected="data")

    v = view
    v.timer.tick(
        poll,
        [owner, v.job, v.shown],
        [v.status, v.gallery, v.rows, v.shown],
        api_visibility="private",
        show_progress="hidden",
    )
    v.gallery.select(select, v.rows, [v.chosen, v.chosen_md], api_visibility="private")
    v.correct.click(
        open_correction,
        [owner, v.job, v.chosen],
        [data["lab_state"], data["lab_view"], data["msg"], tabs],
        api_visibility="private",
    )
    v.adapter.focus(lambda o, r: adapter_choices(studio, o, r), [owner, v.adapter], v.adapter, api_visibility="private")
    data["saved"].success(
        _corrected(rest), [owner, data["lab_state"], v.shown], [v.status, v.gallery, v.rows], api_visibility="private"
    )


def _redraw(rest: LabelRest):
    """The results again (their marks, the reviewed count), after a review."""

    def redraw(o, job_id):
        try:
            text, items, rows = _drawn(rest.results(o, job_id))
        except UserError:
            return gr.skip(), gr.skip(), gr.skip()
        return text, items, rows

    return redraw


def _corrected(rest: LabelRest):
    """After the Data tab's labeller saved a pair: a result opened for correction is marked
    corrected, and its job's results are drawn again."""

    def corrected(o, state, shown):
        try:
            if rest.corrected(o, state) is None or state["review"]["job"] != shown:
                return gr.skip(), gr.skip(), gr.skip()
            return _drawn(rest.results(o, shown))
        except UserError as e:
            return (
                f"The correction is saved to the labelled set, but not marked in the results: {e}",
                gr.skip(),
                gr.skip(),
            )

    return corrected


def _drawn(results: tuple) -> tuple:
    """(summary, gallery items, rows) from LabelRest.results' (items, rows, summary)."""
    items, rows, text = results
    return text, items, rows
