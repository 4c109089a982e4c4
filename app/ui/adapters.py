"""The studio's Adapters tab: this browser's adapters to download (zip or merged checkpoint), load
from a zip, or share on and load from the Hugging Face Hub (actions in app.studio)."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from app.studio import Studio, UserError
from app.ui.common import adapter_choices, outbox, user_errors, valid_owner


def adapters_tab(studio: Studio, owner, preview: dict) -> dict:
    """The tab; `lists(owner, job)` in what it returns refreshes both adapter lists (this tab's and
    the Preview tab's)."""
    with gr.Tab("6. Adapters", id="adapters"):
        gr.Markdown(
            "Your finished adapters (and any you load) can be downloaded, and used in the Preview tab. "
            "An adapter zip holds adapter_config.json, adapter_model.safetensors and a model card; "
            "nothing in it is ever unpickled."
        )
        view = _files()
        _hub(view)
        view.msg = gr.Markdown(elem_id="adapter-msg", elem_classes="studio-msg")
        view.loaded = gr.Textbox(label="adapter", visible=False)

    def lists(owner, job=""):
        """Both adapter lists; the current job's adapter is chosen when it has one."""
        items = studio.adapters(owner) if valid_owner(owner or "") else []
        value = job if job in [ref for _, ref in items] else ""
        return gr.Dropdown(choices=items, value=value or None), adapter_choices(studio, owner, value)

    view.refresh.click(lists, owner, [view.chosen, preview["adapter"]], api_visibility="private")
    _wire_downloads(studio, owner, view)
    _wire_loading(studio, owner, preview, view)
    return {"chosen": view.chosen, "lists": lists}


def _files() -> SimpleNamespace:
    with gr.Row():
        chosen = gr.Dropdown([], label="My adapters", elem_id="my-adapters", scale=3)
        refresh = gr.Button("Refresh", size="sm", scale=0)
    with gr.Row():
        as_zip = gr.Button("Adapter zip")
        as_merged = gr.Button("Merged checkpoint (.safetensors)")
    out_file = gr.File(label="Download", elem_id="adapter-file")
    upload = gr.File(label="Load an adapter zip", file_types=[".zip"], elem_id="adapter-upload")
    load = gr.Button("Load adapter", elem_id="load-adapter")
    return SimpleNamespace(
        chosen=chosen, refresh=refresh, as_zip=as_zip, as_merged=as_merged, out_file=out_file, upload=upload, load=load
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


def _wire_downloads(studio: Studio, owner, view: SimpleNamespace) -> None:
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

    view.as_zip.click(lambda o, r: get(o, r, False), [owner, view.chosen], view.out_file, api_visibility="private")
    view.as_merged.click(lambda o, r: get(o, r, True), [owner, view.chosen], view.out_file, api_visibility="private")


def _wire_loading(studio: Studio, owner, preview: dict, view: SimpleNamespace) -> None:
    """Load a zip or a Hub repository (then both adapter lists show it, chosen), push to the Hub."""

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

    view.push.click(
        push_hub,
        [owner, view.chosen, view.hub_repo, view.hub_token, view.hub_private],
        [view.msg, view.hub_token],
        api_visibility="private",
    )
    for event in (
        view.load.click(load_adapter, [owner, view.upload], [view.loaded, view.msg], api_name="load_adapter"),
        view.pull.click(load_hub, [owner, view.hub_repo], [view.loaded, view.msg], api_visibility="private"),
    ):
        event.success(
            lambda o, v: (gr.Dropdown(choices=studio.adapters(o), value=v), adapter_choices(studio, o, v)),
            [owner, view.loaded],
            [view.chosen, preview["adapter"]],
            api_visibility="private",
        )
