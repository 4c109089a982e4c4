"""Each action's result beside its button: a page event whose failure is a message next to the
button that was clicked (what went wrong, what to do), not a toast in a corner plus an error mark
on every output, and whose message no other action writes over.

An action that is also a public API endpoint keeps the API's behaviour (a UserError is the
client's error text) through a hidden trigger carrying the same function under the API name.
"""

from __future__ import annotations

import functools

import gradio as gr

from app.ui.common import error_message, user_errors


def in_page(fn, outputs: int, failed: str | None = None, at: int = -1):
    """`fn` (returning its `outputs` values, the message beside the button at position `at`, last by
    default) for a page event: an exception becomes that message (after `failed`, what was not
    done, where given), the other outputs left as they are."""

    @functools.wraps(fn)
    def shown(*args):
        try:
            return fn(*args)
        except Exception as e:
            said = error_message(e, fn.__name__)
            out = [gr.skip()] * outputs
            out[at] = f"**{failed}:** {said}" if failed else f"**{said}**"
            return out[0] if outputs == 1 else tuple(out)

    return shown


def api_endpoint(fn, inputs: list, outputs: list, api_name: str) -> None:
    """`fn` as the named API endpoint, on a hidden trigger (the page's button calls `in_page`)."""
    trigger = gr.Button(visible=False, elem_id=f"api-{api_name}")
    trigger.click(user_errors(fn), inputs, outputs, api_name=api_name)


def message(elem_id: str, value: str = "") -> gr.Markdown:
    """The message area beside a button."""
    return gr.Markdown(value, elem_id=elem_id, elem_classes="studio-msg")
