"""Reading an HTTP request's body ahead of the app that serves it, and handing it on unchanged."""

from __future__ import annotations

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
