"""The ASGI apps the tool-call benchmark serves with uvicorn (``uvicorn --factory bench.apps:…``).

* ``rowscope`` — rowscope's own HTTP app (OAuth AS + bearer guard + MCP), from the environment,
  exactly as ``rowscope serve`` builds it; a factory so uvicorn can run one per worker.
* ``floor`` — a bare MCP SDK ``MCPServer`` with one tool that returns a constant, served with the
  same transport settings (stateless, JSON responses, mounted at ``/``, DNS-rebinding protection).
* ``null`` — a raw ASGI app answering every request with a constant JSON body: the ceiling of
  uvicorn plus the load generator on this machine (what no MCP server can beat).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import Receive, Scope, Send


def rowscope() -> Any:
    from rowscope.server.app import build_http_app, build_runtime
    from rowscope.server.settings import Settings

    settings = Settings()
    assert settings.database_url is not None
    return build_http_app(build_runtime(settings, settings.database_url.get_secret_value()))


def floor() -> Starlette:
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("floor", log_level="WARNING")

    @server.tool()
    def constant() -> str:
        """Return a constant."""
        return "ok"

    app = server.streamable_http_app(streamable_http_path="/mcp", stateless_http=True, json_response=True)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with server.session_manager.run():
            yield

    return Starlette(routes=[Mount("/", app=app)], lifespan=lifespan)


BODY = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}]}}'


async def null(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


def null_factory() -> Any:
    return null
