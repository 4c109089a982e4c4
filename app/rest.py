"""A small JSON API beside Gradio's, for the calls a client makes many times a second.

    POST /studio/v1/status  {"owner": "...", "job": "..."}  -> the job's state (as the /status endpoint)
    POST /studio/v1/jobs    {"owner": "..."}                -> the owner's jobs, newest first

Gradio's own routes (/gradio_api/run/status, gradio_client) answer the same questions; each call
there costs ~14 ms of Gradio's request handling around a 1 ms answer, which under many polling
clients is what the p99 is made of (docs/benchmarks.md, "Studio API: /status under load"). These
routes call the same Studio methods with the same checks and messages, and nothing else.
Owner tokens travel in the body, never in the URL (URLs end up in logs). Errors: 400 with
{"error": message} for a bad request, 413 for a body over MAX_BODY, 500 with an error id.
"""

from __future__ import annotations

import json

from app.studio import Studio, UserError
from app.ui.common import error_message

PREFIX = "/studio/v1"
MAX_BODY = 4096  # bytes: an owner token and a job id fit many times over


class _BadRequest(UserError):
    pass


class _TooLarge(Exception):
    pass


async def _read_json(request) -> dict:
    """The body as a JSON object, refusing more than MAX_BODY bytes however it is sent."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
        raise _TooLarge
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise _TooLarge
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise _BadRequest('the body is not JSON: send an object like {"owner": ..., "job": ...}') from None
    if not isinstance(data, dict):
        raise _BadRequest('the body must be a JSON object like {"owner": ..., "job": ...}')
    return data


def add_routes(app, studio: Studio) -> None:
    """Add the routes to Gradio's FastAPI app (after launch: `blocks.app`)."""
    from starlette.responses import JSONResponse

    def route(name: str, fields: tuple[str, ...], answer):
        # async: a millisecond of SQLite and a stat, answered on the event loop
        async def endpoint(request):  # a plain Starlette route: no FastAPI validation layer
            try:
                data = await _read_json(request)
                unknown = sorted(set(data) - set(fields))
                if unknown:
                    raise _BadRequest(f"unknown field(s) {', '.join(map(repr, unknown[:5]))}: send {', '.join(fields)}")
                return JSONResponse(answer(*(data.get(f) for f in fields)))
            except _TooLarge:
                return JSONResponse({"error": f"the request body is over {MAX_BODY} bytes"}, status_code=413)
            except UserError as e:
                return JSONResponse({"error": str(e)}, status_code=400)
            except Exception as e:  # the message has an error id; the traceback is in the log
                return JSONResponse({"error": error_message(e, f"rest {name}")}, status_code=500)

        app.add_route(f"{PREFIX}/{name}", endpoint, methods=["POST"], include_in_schema=False)

    route("status", ("owner", "job"), studio.status)
    route("jobs", ("owner",), studio.jobs)
