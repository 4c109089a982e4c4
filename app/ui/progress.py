"""The studio's Progress tab: the browser's jobs, the chosen job's status, loss and held-out curves,
the held-out previews and the before/after slider, its log, cancel / resume / download (actions in
app.studio; the curves from app.progress)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import gradio as gr
import pandas as pd

from adapt.pipeline import (
    INTERVAL,
    METRIC_HELP,
    forgetting_report,
    forgetting_warning,
    small_split_warning,
    with_interval,
)
from app.config import JobFiles
from app.jobs import FINISHED
from app.progress import read_progress
from app.studio import Studio, UserError
from app.ui.adapters import adapter_download
from app.ui.common import adapter_choices, read_rgb, valid_owner
from app.ui.messages import api_endpoint, in_page, message

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


def progress_tab(studio: Studio, owner, job, adapter_choice, task) -> dict:
    """The tab's contents, laid out inside the Progress tab (built after the Preview tab, whose
    adapter list, for the page's `task`, it updates once a job's adapter is ready)."""
    with gr.Column():
        view = _job_controls()
        _charts(view)
        _downloads(view)
        view.seen = gr.State(None)
        timer = gr.Timer(1.5)
    refresh = _refresher(studio)
    outputs = [view.seen, view.status_md, view.loss_plot, view.metric_plot, view.preview, view.slider, view.scores]
    outputs += [view.log, view.job_view, adapter_choice, view.jobs, view.cancel, view.resume]
    timer.tick(refresh, [owner, job, view.seen, task], outputs, api_visibility="private", show_progress="hidden")
    job.change(refresh, [owner, job, gr.State(None), task], outputs, api_visibility="private")
    _wire_actions(studio, owner, job, view)
    return {"jobs": view.jobs}


def _job_controls() -> SimpleNamespace:
    with gr.Row():
        jobs = gr.Dropdown([], label="My jobs", elem_id="jobs", scale=3)
        job_view = gr.Textbox(label="Job id", elem_id="job-id", scale=3)
        # enabled only where they apply to the job's status (see `actions`)
        cancel = gr.Button("Cancel job", variant="stop", scale=1, elem_id="cancel", interactive=False)
        resume = gr.Button("Resume", scale=1, elem_id="resume", interactive=False)  # a failed job
    action_msg = message("job-action-msg")  # Cancel's and Resume's answers, which the status line never overwrites
    status_md = gr.Markdown("No job yet: start one in the Train tab.", elem_id="job-status")
    return SimpleNamespace(
        jobs=jobs, job_view=job_view, cancel=cancel, resume=resume, action_msg=action_msg, status_md=status_md
    )


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
    view.download_msg = message("download-msg")


def _refresher(studio: Studio):
    """The timer's update: everything about the job, redrawn only when something changed (the
    signature of its status, events and pictures)."""

    def refresh(o, job_id, last, task=None):
        if not job_id or not valid_owner(o or ""):
            return (None,) + (gr.skip(),) * 12
        try:
            s = studio.status(o, job_id)
        except UserError as e:
            return (None, f"**{e}**") + (gr.skip(),) * 11
        job_files = studio.paths.job_files(s["job"])
        p = read_progress(job_files.folder)
        pictures = (job_files.after, job_files.preview, job_files.before)  # the newest first
        stamps = tuple(f.stat().st_mtime_ns if f.exists() else 0 for f in pictures)
        signature = (s["job"], s["status"], s["error"], p.signature, stamps)
        if signature == last:
            return (last,) + (gr.skip(),) * 12
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
            _scores(s["frozen"], s["adapted"], s.get("warning"), s.get("best_step"), p.heldout, s.get("previous")),
            "\n".join(p.log),
            s["job"],
            adapter_choices(studio, o, s["job"], task) if s["adapter_ready"] else gr.skip(),
            job_choices(studio, o, s["job"]),
            *actions(s["status"]),
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


def actions(status: str) -> tuple:
    """Cancel and Resume, each enabled only where it applies: Cancel a queued or running job,
    Resume a failed one."""
    return gr.Button(interactive=status not in FINISHED), gr.Button(interactive=status == "failed")


def _wire_actions(studio: Studio, owner, job, view: SimpleNamespace) -> None:
    """Cancel, Resume and Download, each answering beside its button; the same functions are the
    API's cancel, resume and download endpoints."""

    def do_cancel(owner, job):
        return studio.cancel(owner, job)

    def do_resume(owner, job):
        return studio.resume(owner, job)

    def download(owner, job, merged):
        return adapter_download(studio, owner, job, merged)

    view.jobs.input(lambda j: j, view.jobs, job, api_visibility="private")
    view.job_view.submit(lambda j: j.strip(), view.job_view, job, api_visibility="private")
    job.change(lambda o, j: job_choices(studio, o, j), [owner, job], view.jobs, api_visibility="private")
    for button, fn, name in ((view.cancel, do_cancel, "cancel"), (view.resume, do_resume, "resume")):
        api_endpoint(fn, [owner, view.job_view], view.action_msg, name)
        button.click(in_page(fn, 1), [owner, view.job_view], view.action_msg, api_visibility="private")
    api_endpoint(download, [owner, view.job_view, view.merged], view.out_file, "download")
    view.get.click(
        in_page(lambda *a: (download(*a), ""), 2),
        [owner, view.job_view, view.merged],
        [view.out_file, view.download_msg],
        api_visibility="private",
    )


def job_choices(studio: Studio, owner: str, current: str = ""):
    """The "My jobs" dropdown: this browser's jobs, newest first, the current one chosen."""
    try:
        jobs = studio.jobs(owner)
    except UserError:
        jobs = []
    choices = [
        (
            f"{time.strftime('%m-%d %H:%M', time.localtime(j['created']))} {j['kind']}: {j['method']} on "
            f"{j['backbone']}: {j['status']}",
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
    heldout: int | None = None,
    previous: dict | None = None,
) -> str:
    """The held-out table: frozen and adapted (a retraining round also its previous adapter), each
    score with its 95% bootstrap interval over the images where the run gives one, what each metric
    means in a line, and a flag on a split too small to trust."""
    if not frozen:
        return ""
    keys = [k for k, v in frozen.items() if isinstance(v, float)][:8]
    images = f" ({heldout} images)" if heldout else ""
    columns = [("frozen", frozen)] + ([("previous adapter", previous)] if previous else []) + [("adapted", adapted)]
    rows = [f"| held-out{images} | " + " | ".join(c for c, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    rows += [f"| {k} | " + " | ".join(with_interval(m, k) for _, m in columns) + " |" for k in keys]
    if any((frozen or {}).get(INTERVAL) or {}):
        rows.append("\n[low, high]: the 95% bootstrap interval over the held-out images.")
    rows += [f"\n- {METRIC_HELP[k]}" for k in keys if k in METRIC_HELP]
    if previous:
        rows.append(
            "\nA retraining round: held out on the same images as the adapter it continues (never trained on); "
            "*previous adapter* is that adapter on them, before this round, and *adapted* this round's result."
        )
    if best is not None:
        rows.append(f"\nThe adapter is the state of step {best}, the best on the validation images.")
    small = small_split_warning(heldout) if heldout is not None else None
    if small:
        rows.append(f"\n**Too few held-out images.** {small[0].upper()}{small[1:]}.")
    if warning:
        rows.append(f"\n**Warning.** {warning}")
    forgot = forgetting_warning(frozen, adapted)
    if forgot:
        rows.append(f"\n**Did it forget?** {forgot}")
    elif forgetting_report(frozen, adapted):
        rows.append("\n**Did it forget?** No: absent-class false positives rose by no more than 2 points.")
    return "\n".join(rows)
