"""The studio's Adapters tab: this browser's adapters to download (zip or merged checkpoint), load
from a zip, or share on and load from the Hugging Face Hub (actions in app.studio)."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from app.studio import Studio, UserError
from app.ui.common import adapter_choices, outbox, valid_owner
from app.ui.messages import api_endpoint, in_page, message


def adapters_tab(studio: Studio, owner, task, preview: dict) -> dict:
    """The tab; `lists(owner, job, task)` in what it returns refreshes both adapter lists (this
    tab's: all of them, and the Preview tab's: those for the task)."""
    with gr.Tab("6. Adapters", id="adapters"):
        gr.Markdown(
            "Your finished adapters (and any you load) can be downloaded, and used in the Preview tab. "
            "An adapter zip holds adapter_config.json, adapter_model.safetensors and a model card; "
            "nothing in it is ever unpickled."
        )
        view = _files()
        _hub(view)
        view.loaded = gr.Textbox(label="adapter", visible=False)
        _wire_loading(studio, owner, task, preview, view)  # in the tab: its hidden API trigger too

    def lists(owner, job="", task=None):
        """Both adapter lists; the current job's adapter is chosen when it has one (in the Preview
        tab's only when it is for the task)."""
        items = studio.adapters(owner) if valid_owner(owner or "") else []
        value = job if job in [ref for _, ref in items] else ""
        return gr.Dropdown(choices=items, value=value or None), adapter_choices(studio, owner, value, task)

    view.refresh.click(lists, [owner, gr.State(""), task], [view.chosen, preview["adapter"]], api_visibility="private")
    _wire_downloads(studio, owner, view)
    return {"chosen": view.chosen, "lists": lists, "preview": preview["adapter"]}


def _files() -> SimpleNamespace:
    with gr.Row():
        chosen = gr.Dropdown([], label="My adapters", elem_id="my-adapters", scale=3)
        refresh = gr.Button("Refresh", size="sm", scale=0)
    with gr.Row():
        as_zip = gr.Button("Adapter zip")
        as_merged = gr.Button("Merged checkpoint (.safetensors)")
    download_msg = message("adapter-download-msg")
    out_file = gr.File(label="Download", elem_id="adapter-file")
    upload = gr.File(label="Load an adapter zip", file_types=[".zip"], elem_id="adapter-upload")
    load = gr.Button("Load adapter", elem_id="load-adapter")
    msg = message("adapter-msg")
    return SimpleNamespace(
        chosen=chosen,
        refresh=refresh,
        as_zip=as_zip,
        as_merged=as_merged,
        download_msg=download_msg,
        out_file=out_file,
        upload=upload,
        load=load,
        msg=msg,
    )


def _hub(view: SimpleNamespace) -> None:
    with gr.Accordion("Hugging Face Hub", open=False):
        gr.Markdown(
            "Share the chosen adapter as a Hub model repository (its three files and the model card), "
            "or load one. The token is used for the upload only: it is never stored or logged."
        )
        with gr.Row():
            view.hub_repo = gr.Textbox(label="Repository (user/name)", max_lines=1, max_length=200, elem_id="hub-repo")
            view.hub_token = gr.Textbox(
                label="Write token", type="password", max_lines=1, max_length=400, elem_id="hub-token"
            )
            view.hub_private = gr.Checkbox(label="Private", value=True)
        with gr.Row():
            view.push = gr.Button("Push to Hub", elem_id="push-hub")
            view.pull = gr.Button("Load from Hub", elem_id="load-hub")
        view.hub_msg = message("hub-msg")


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in str(text))[:60]


def download_name(studio: Studio, owner: str, ref: str, merged: bool) -> str:
    """A download's file name that says what it is: method, backbone and which adapter
    ("adapter-parser-tiny-sam-1a2b3c4d.zip", "merged-lora-sam-vit-b-1a2b3c4d.safetensors")."""
    from adapt.export import read_adapter

    if ref.startswith("upload-"):
        cfg, _ = read_adapter(studio._adapter_path(owner, ref))
        method, backbone, which = cfg["method"], cfg["base_model"]["name"], ref[len("upload-") :][:8]
    else:
        train = studio.job(owner, ref)["config"]["train"]
        method, backbone, which = train["method"], train["backbone"], ref[:8]
    kind, suffix = ("merged", "safetensors") if merged else ("adapter", "zip")
    return f"{kind}-{_safe(method)}-{_safe(backbone)}-{_safe(which)}.{suffix}"


def adapter_download(studio: Studio, owner: str, ref: str, merged: bool) -> str:
    """A copy of the adapter zip (or the merged checkpoint of a job's adapter) for the browser."""
    if not ref:
        raise UserError("choose an adapter first")
    if ref.startswith("upload-"):
        if merged:
            raise UserError("merged checkpoints are made from your own training jobs")
        path = studio._adapter_path(owner, ref)
    else:
        path = studio.merged_checkpoint(owner, ref) if merged else studio.adapter_zip(owner, ref)
    return outbox(path, download_name(studio, owner, ref, merged))


def _wire_downloads(studio: Studio, owner, view: SimpleNamespace) -> None:
    for button, merged in ((view.as_zip, False), (view.as_merged, True)):
        button.click(
            in_page(lambda o, r, m=merged: (adapter_download(studio, o, r, m), ""), 2),
            [owner, view.chosen],
            [view.out_file, view.download_msg],
            api_visibility="private",
        )


def _wire_loading(studio: Studio, owner, task, preview: dict, view: SimpleNamespace) -> None:
    """Load a zip or a Hub repository (then both adapter lists show it, chosen), push to the Hub;
    each result beside its button."""

    def load_adapter(owner, adapter_zip):
        ref, desc = studio.upload_adapter(owner, adapter_zip)
        return ref, f"Loaded {desc}. It is now in the adapter lists (Preview tab)."

    def push_hub(owner, ref, repo, token, private):
        url = studio.push_adapter(owner, ref, repo, token, private)
        return "", f"Pushed to [{url}]({url})."  # the token field is cleared

    def load_hub(owner, repo):
        ref, desc = studio.load_hub_adapter(owner, repo)
        return ref, f"Loaded {desc} from the Hub. It is now in the adapter lists (Preview tab)."

    view.push.click(
        in_page(push_hub, 2),
        [owner, view.chosen, view.hub_repo, view.hub_token, view.hub_private],
        [view.hub_token, view.hub_msg],
        api_visibility="private",
    )
    api_endpoint(load_adapter, [owner, view.upload], [view.loaded, view.msg], "load_adapter")
    for button, fn, inputs, msg in (
        (view.load, load_adapter, [owner, view.upload], view.msg),
        (view.pull, load_hub, [owner, view.hub_repo], view.hub_msg),
    ):
        button.click(in_page(fn, 2), inputs, [view.loaded, msg], api_visibility="private").then(
            lambda o, v, t: (gr.Dropdown(choices=studio.adapters(o), value=v), adapter_choices(studio, o, v, t)),
            [owner, view.loaded, task],
            [view.chosen, preview["adapter"]],
            api_visibility="private",
        )
