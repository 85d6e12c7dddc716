"""Read-only ``tools/call`` requests answered in the request's own task, without the SDK's transport.

rowscope serves Streamable HTTP statelessly with JSON responses. For every POST the MCP SDK's
legacy (2025-era) transport builds a fresh session: memory streams, a task group, a dispatcher and a
server runner — measured at ~0.5 ms per call on these machines, more than the database needs for a
whole ``query_records`` (``bench/toolcall.py``). A read-only tool call needs none of it: no
back-channel (no progress, sampling or elicitation), no session, one request in and one response
out. So, after the bearer guard, :class:`DirectToolCalls` answers exactly those requests itself and
hands everything else — every other method, batches, notifications, write tools, the 2026-07-28
wire, anything malformed or unusual — to the SDK unchanged.

What stays the SDK's: the request's surface validation for its protocol version
(``mcp_types.methods.validate_client_request``), argument validation and the call and result
conversion (``MCPServer.call_tool``), and the per-version shaping of the result
(``serialize_server_result``). What is done here mirrors the SDK's transport and handler step for
step: the DNS-rebinding and Content-Type check (the SDK's own ``TransportSecurityMiddleware``), the
Accept check, and the mapping of a tool failure to an ``isError`` result. ``tests/test_direct.py``
sends a corpus of requests through both paths and requires identical answers.
``ROWSCOPE_DIRECT_TOOL_CALLS=false`` turns the direct path off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pydantic_core
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.server.streamable_http import check_accept_headers
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp.shared.exceptions import MCPError, NoBackChannelError
from mcp_types import CallToolResult, TextContent
from mcp_types.methods import serialize_server_result, validate_client_request
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from rowscope.server.bodies import read_body, replay

log = logging.getLogger(__name__)

METHOD = "tools/call"
PARAM_KEYS = frozenset({"name", "arguments", "_meta"})
MAX_DIRECT_BODY = 64 * 1024  # a read call is small; anything larger is streamed to the SDK unread


class _NoBackChannel:
    """The session of a direct call: there is none, so any use of it fails as the SDK's
    single-exchange path fails a server-initiated request (``NoBackChannelError``)."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def refuse(*_: Any, **__: Any) -> Any:
            raise NoBackChannelError(name)

        return refuse


class DirectToolCalls:
    def __init__(
        self,
        app: ASGIApp,
        server: MCPServer[Any],
        lifespan_context: Any,
        *,
        security: TransportSecuritySettings,
        tools: frozenset[str],
    ) -> None:
        self.app = app
        self.server = server
        self.lifespan_context = lifespan_context
        self.security = TransportSecurityMiddleware(security)
        self.tools = tools

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/mcp":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if not length.isdigit() or int(length) > MAX_DIRECT_BODY:
            await self.app(scope, receive, send)  # streamed to the SDK untouched
            return
        body = await read_body(receive, MAX_DIRECT_BODY)
        if body is None:  # longer than its own Content-Length said
            await JSONResponse({"error": "request body too large"}, status_code=413)(scope, receive, send)
            return
        request = Request(scope, replay(body, receive))
        call = await self._direct_call(request, body)
        if call is None:
            await self.app(scope, replay(body, receive), send)
            return
        request_id, version, name, arguments = call
        payload = await self._answer(request, request_id, version, name, arguments)
        data = pydantic_core.to_json(payload)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def _direct_call(
        self, request: Request, body: bytes
    ) -> tuple[Any, str, str, dict[str, Any]] | None:
        """``(id, version, tool, arguments)`` when this request is one this path answers exactly as
        the SDK would; ``None`` hands it to the SDK."""
        headers = request.headers
        version = headers.get("mcp-protocol-version")
        if version not in HANDSHAKE_PROTOCOL_VERSIONS or "mcp-session-id" in headers:
            return None
        has_json, _ = check_accept_headers(request)
        if not has_json or await self.security.validate_request(request, is_post=True) is not None:
            return None
        try:
            message = pydantic_core.from_json(body)  # the SDK's parser, so both read the same JSON
        except ValueError:
            return None
        if not isinstance(message, dict) or message.keys() != {"jsonrpc", "id", "method", "params"}:
            return None
        request_id, params = message["id"], message["params"]
        if (
            message["jsonrpc"] != "2.0"
            or message["method"] != METHOD
            or type(request_id) not in (int, str)
            or not isinstance(params, dict)
            or not params.keys() <= PARAM_KEYS
            or params.get("name") not in self.tools
        ):
            return None
        try:
            validate_client_request(METHOD, version, params)
        except (ValidationError, KeyError, ValueError):
            return None
        arguments = params.get("arguments")
        if arguments is not None and not isinstance(arguments, dict):
            return None
        return request_id, version, params["name"], arguments or {}

    async def _answer(
        self, request: Request, request_id: Any, version: str, name: str, arguments: dict[str, Any]
    ) -> dict[str, Any]:
        request_context: ServerRequestContext[Any, Request] = ServerRequestContext(
            session=_NoBackChannel(),  # type: ignore[arg-type]
            lifespan_context=self.lifespan_context,
            protocol_version=version,
            method=METHOD,
            params={"name": name, "arguments": arguments},
            request_id=request_id,
            request=request,
        )
        context: Context[Any, Request] = Context(request_context=request_context, mcp_server=self.server)
        try:
            result = await self.server.call_tool(name, arguments, context)
        except MCPError as exc:
            error = {"code": exc.error.code, "message": exc.error.message}
            if exc.error.data is not None:
                error["data"] = exc.error.data
            return {"jsonrpc": "2.0", "id": request_id, "error": error}
        except Exception as exc:  # the SDK's tools/call handler: every tool failure is an isError result
            if isinstance(exc, ToolError) and not isinstance(exc, UnexpectedToolError):
                log.info("Tool %r failed: %r", name, str(exc))
            else:
                log.exception("Tool %r raised an unexpected exception", name)
            result = CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)
        dumped = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        return {
            "jsonrpc": "2.0",
            "id": request_id,
            "result": serialize_server_result(METHOD, version, dumped),
        }
