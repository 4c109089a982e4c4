"""The studio's API-only endpoints (no element in the page): job status, the browser's jobs and the
tasks on offer, plus the endpoints a tab hands over. Registered outside the Tabs: a gr.api inside
them is drawn as a stray tab."""

from __future__ import annotations

import gradio as gr

from adapt.methods import methods_for
from adapt.tasks import TASKS
from app.catalog import backbones_for, family_for_task
from app.studio import Studio
from app.ui.common import user_errors


def api_endpoints(studio: Studio, extra=()) -> None:
    """Register the API-only endpoints; `extra`: functions a tab defines (each named after its function)."""

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
    for fn in extra:
        gr.api(fn, api_name=fn.__name__, queue=False)
