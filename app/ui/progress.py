"""The studio's Progress tab: the browser's jobs, the chosen job's status, loss and held-out curves,
the held-out previews and the before/after slider, its log, cancel / resume / download (actions in
app.studio; the curves from app.progress)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import gradio as gr
import pandas as pd

from app.config import JobFiles
from app.progress import read_progress
from app.studio import Studio, UserError
from app.ui.common import adapter_choices, outbox, read_rgb, user_errors, valid_owner

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


def progress_tab(studio: Studio, owner, job, adapter_choice) -> dict:
    """The tab's contents, laid out inside the Progress tab (built after the Preview tab, whose
    adapter list it updates once a job's adapter is ready)."""
    with gr.Column():
        view = _job_controls()
        _charts(view)
        _downloads(view)
        view.seen = gr.State(None)
        timer = gr.Timer(1.5)
    refresh = _refresher(studio)
    outputs = [view.seen, view.status_md, view.loss_plot, view.metric_plot, view.preview, view.slider, view.scores]
    outputs += [view.log, view.job_view, adapter_choice, view.jobs]
    timer.tick(refresh, [owner, job, view.seen], outputs, api_visibility="private", show_progress="hidden")
    job.change(refresh, [owner, job, gr.State(None)], outputs, api_visibility="private")
    _wire_actions(studio, owner, job, view)
    return {"jobs": view.jobs}


def _job_controls() -> SimpleNamespace:
    with gr.Row():
        jobs = gr.Dropdown([], label="My jobs", elem_id="jobs", scale=3)
        job_view = gr.Textbox(label="Job id", elem_id="job-id", scale=3)
        cancel = gr.Button("Cancel job", variant="stop", scale=1, elem_id="cancel")
        resume = gr.Button("Resume", scale=1, elem_id="resume")  # a failed job, from its checkpoint
    status_md = gr.Markdown("No job yet: start one in the Train tab.", elem_id="job-status")
    return SimpleNamespace(jobs=jobs, job_view=job_view, cancel=cancel, resume=resume, status_md=status_md)


def _charts(view: SimpleNamespace) -> None:
    with gr.Row():
        view.loss_plot = gr.LinePlot(x="step", y="loss", title="Training loss", height=260, elem_id="loss-plot")
        view.metric_plot = gr.LinePlot(
            x="step",
            y="score",
            color="series",
            title="Held-out metrics",
            height=260,
            color_map=SERIES_COLORS,
            elem_id="metric-plot",
        )
    with gr.Row():
        view.preview = gr.Image(
            label="Held-out images: truth | prediction (refreshes as training goes)",
            interactive=False,
            format="png",
            height=360,
            elem_id="preview",
        )
        view.slider = gr.ImageSlider(label="Before (frozen) / after (adapted)", format="png", elem_id="before-after")
    view.scores = gr.Markdown(elem_id="scores")
    view.log = gr.Textbox(label="Log", lines=8, max_lines=12, elem_id="log")


def _downloads(view: SimpleNamespace) -> None:
    with gr.Row():
        view.merged = gr.Checkbox(
            False, label="merged checkpoint (base + adapter in one .safetensors) instead of the adapter zip"
        )
        view.get = gr.Button("Download", elem_id="download")
        view.out_file = gr.File(label="Download", elem_id="download-file")


def _refresher(studio: Studio):
    """The timer's update: everything about the job, redrawn only when something changed (the
    signature of its status, events and pictures)."""

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
        loss_df, metric_df = _curves(p)
        shown = next((im for im in map(read_rgb, pictures) if im is not None), None)
        before = read_rgb(JobFiles.predictions(job_files.before))
        after = read_rgb(JobFiles.predictions(job_files.after))
        return (
            signature,
            _status_text(s),
            loss_df,
            metric_df,
            shown,
            (before, after) if before is not None and after is not None else None,
            _scores(s["frozen"], s["adapted"], s.get("warning"), s.get("best_step"), s.get("previous")),
            "\n".join(p.log),
            s["job"],
            adapter_choices(studio, o, s["job"]) if s["adapter_ready"] else gr.skip(),
            job_choices(studio, o, s["job"]),
        )

    return refresh


def _curves(p) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """The loss and held-out metric tables for the plots, None while a plot has nothing to draw.
    The metrics are None until the adapted model has a score: gradio's plot keeps the series (and
    legend) of its first draw, so that draw must hold both the frozen and the adapted lines."""
    curves = p.curves()
    # explicit dtypes, so that the axes are quantitative
    loss_df = pd.DataFrame(curves["loss"], columns=["step", "loss"]).astype({"step": int, "loss": float})
    metric_df = pd.DataFrame(curves["metric"], columns=["step", "score", "series"]).astype(
        {"step": int, "score": float, "series": str}
    )
    return (
        loss_df if len(loss_df) else None,
        metric_df if metric_df["series"].str.contains("adapted").any() else None,
    )


def _wire_actions(studio: Studio, owner, job, view: SimpleNamespace) -> None:
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

    view.jobs.input(lambda j: j, view.jobs, job, api_visibility="private")
    view.job_view.submit(lambda j: j.strip(), view.job_view, job, api_visibility="private")
    job.change(lambda o, j: job_choices(studio, o, j), [owner, job], view.jobs, api_visibility="private")
    view.cancel.click(do_cancel, [owner, view.job_view], view.status_md, api_name="cancel")
    view.resume.click(do_resume, [owner, view.job_view], view.status_md, api_name="resume")
    view.get.click(download, [owner, view.job_view, view.merged], view.out_file, api_name="download")


def job_choices(studio: Studio, owner: str, current: str = ""):
    """The "My jobs" dropdown: this browser's jobs, newest first, the current one chosen."""
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


def _scores(
    frozen: dict | None,
    adapted: dict | None,
    warning: str | None = None,
    best: int | None = None,
    previous: dict | None = None,
) -> str:
    """The held-out table: frozen and adapted; a retraining round also its previous adapter."""
    if not frozen:
        return ""
    keys = [k for k, v in frozen.items() if isinstance(v, float)][:8]
    columns = [("frozen", frozen)] + ([("previous adapter", previous)] if previous else []) + [("adapted", adapted)]
    rows = ["| held-out | " + " | ".join(c for c, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for k in keys:
        cells = [f"{m[k]:.4f}" if m and isinstance(m.get(k), float) else "" for _, m in columns]
        rows.append(f"| {k} | " + " | ".join(cells) + " |")
    if previous:
        rows.append(
            "\nA retraining round: held out on the same images as the adapter it continues (never trained on); "
            "*previous adapter* is that adapter on them, before this round, and *adapted* this round's result."
        )
    if best is not None:
        rows.append(f"\nThe adapter is the state of step {best}, the best on the validation images.")
    if warning:
        rows.append(f"\n**Warning.** {warning}")
    return "\n".join(rows)
