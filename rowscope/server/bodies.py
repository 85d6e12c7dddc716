"""Reading an HTTP request's body ahead of the app that serves it, and handing it on unchanged."""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.types import Message, Receive

MAX_BODY = 4 * 1024 * 1024  # what /mcp accepts; the largest tool call is add_training_content's text


async def read_body(receive: Receive, limit: int = MAX_BODY) -> bytes | None:
    """The whole body, or ``None`` once it passes ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay(body: bytes, original: Receive) -> Receive:
    """Hand the already-read body to the app, then pass on whatever the client sends next."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await original()

    return receive


async def request_body(request: Request, limit: int) -> bytes | None:
    """``request``'s whole body, or ``None`` as soon as it is known to pass ``limit`` bytes: at once
    when its Content-Length says so, otherwise (a chunked body, or no length) once the bytes that
    arrived do. Nothing past the limit is kept, and nothing more is read."""
    declared = request.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limit:
        return None
    return await read_body(request.receive, limit)


async def request_form(request: Request, limit: int) -> FormData | None:
    """The request's form, parsed from a body read by :func:`request_body`; ``None`` past ``limit``."""
    body = await request_body(request, limit)
    if body is None:
        return None
    return await Request(request.scope, replay(body, request.receive)).form()
