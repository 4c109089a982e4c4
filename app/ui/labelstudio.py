"""The studio's Label Studio tab: connect a Label Studio project once (its URL, an API token, the
project id), and follow what the studio learns from it (app.lsbackend: the protocol, the pairs,
the training rounds and why the served model changed or did not)."""

from __future__ import annotations

import gradio as gr

from app.studio import Studio
from app.ui.common import NO_ADAPTER, adapter_choices
from app.ui.messages import in_page, message


def labelstudio_tab(studio: Studio, owner, task) -> dict:
    # imported here: app.lsbackend reaches app.ui (through app.rest's error messages), whose package
    # loads this module first
    from app.lsbackend import KEEP_TOKEN, backend_for, describe

    backend = backend_for(studio)
    with gr.Tab("Label Studio", id="labelstudio"):
        gr.Markdown(
            "Keep labelling in Label Studio: the studio serves your adapter there as an ML backend, "
            "learns from every annotation saved and retrains on *Start Training* (README, "
            '"Use it from Label Studio"). The adapter chosen sets the backbone and method (none: the task\'s '
            "bundled backbone and its first method). The token is checked with Label Studio now and kept "
            "only where you choose; it is never shown again or logged."
        )
        with gr.Row():
            url = gr.Textbox(label="Label Studio URL", placeholder="http://127.0.0.1:8080", elem_id="ls-url")
            token = gr.Textbox(label="API token", type="password", elem_id="ls-token")
            project = gr.Number(label="project id", value=1, precision=0, elem_id="ls-project")
        with gr.Row():
            adapter = gr.Dropdown(
                [NO_ADAPTER], value="", label="adapter to serve (none: the frozen backbone until the first round)"
            )
            steps = gr.Number(label="steps per training round", value=100, precision=0)
            every = gr.Number(label="train every N annotations (0: on Start Training)", value=0, precision=0)
            keep = gr.Radio(list(KEEP_TOKEN), value=KEEP_TOKEN[0], label="keep the token in")
        connect = gr.Button("Connect", variant="primary", elem_id="ls-connect")
        connection = gr.Textbox(label="connection", visible=False)
        with gr.Row():
            refresh = gr.Button("Refresh", size="sm", scale=0)
        msg = message("ls-msg")

    def on_connect(o, t, u, k, p, a, n, e, kept):
        status = backend.connect(o, u, k, p, task=t, adapter=a or None, steps=n, train_every=e, keep_token=kept)
        return status["connection"], "", describe(status)

    def on_refresh(o, t, c, a):
        said = describe(backend.status(o, c)) if c else "connect a project first"
        return adapter_choices(studio, o, a, t), said

    connect.click(
        in_page(on_connect, 3, failed="not connected"),
        [owner, task, url, token, project, adapter, steps, every, keep],
        [connection, token, msg],
        api_visibility="private",
    )
    refresh.click(in_page(on_refresh, 2), [owner, task, connection, adapter], [adapter, msg], api_visibility="private")
    return {"adapter": adapter}
