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

import inspect
import json

from starlette.responses import JSONResponse

from app.studio import Studio, UserError
from app.ui.common import error_message

PREFIX = "/studio/v1"
MAX_BODY = 4096  # bytes: an owner token and a job id fit many times over


class BadRequest(UserError):
    pass


class TooLarge(Exception):
    def __init__(self, limit: int = MAX_BODY):
        super().__init__(f"the request body is over {limit} bytes")


async def read_json(request, limit: int = MAX_BODY, example: str = '{"owner": ..., "job": ...}') -> dict:
    """The body as a JSON object, refusing more than `limit` bytes however it is sent (`example`:
    what the messages show a good body to look like)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise TooLarge(limit)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(limit)
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(f"the body is not JSON: send an object like {example}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"the body must be a JSON object like {example}")
    return data


async def answered(name: str, answer) -> JSONResponse:
    """What `answer()` returns (awaited when it is a coroutine) as JSON, or the error it raised as
    {"error": message}: 400 for a UserError, 413 for a body over the limit, 500 with an error id
    (the traceback is in the log) for anything else."""
    try:
        result = answer()
        return JSONResponse(await result if inspect.isawaitable(result) else result)
    except TooLarge as e:
        return JSONResponse({"error": str(e)}, status_code=413)
    except UserError as e:
        return JSONResponse({"error": str(e)}, status_code=400)
    except Exception as e:
        return JSONResponse({"error": error_message(e, f"rest {name}")}, status_code=500)


def json_route(app, name: str, fields: tuple[str, ...], answer, blocking: bool = False) -> None:
    """POST PREFIX/name taking a JSON object of `fields` (each optional, no others) and answering
    `answer(*values)`: on the event loop (a millisecond of SQLite and a stat), or with `blocking`
    (it waits on the network) in a worker thread. `app`: Gradio's FastAPI app (`blocks.app`)."""
    from starlette.concurrency import run_in_threadpool

    async def respond(request):
        data = await read_json(request)
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise BadRequest(f"unknown field(s) {', '.join(map(repr, unknown[:5]))}: send {', '.join(fields)}")
        values = [data.get(f) for f in fields]
        return await run_in_threadpool(answer, *values) if blocking else answer(*values)

    async def endpoint(request):  # a plain Starlette route: no FastAPI validation layer
        return await answered(name, lambda: respond(request))

    app.add_route(f"{PREFIX}/{name}", endpoint, methods=["POST"], include_in_schema=False)


def add_routes(app, studio: Studio) -> None:
    """Add the routes to Gradio's FastAPI app (after launch: `blocks.app`)."""
    json_route(app, "status", ("owner", "job"), studio.status)
    json_route(app, "jobs", ("owner",), studio.jobs)
