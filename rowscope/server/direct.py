"""Read-only ``tools/call`` requests answered in the request's own task, without the SDK's transport.

rowscope serves Streamable HTTP statelessly with JSON responses. A read-only tool call needs none of
the SDK's per-request machinery around the tool: no back-channel (no progress, sampling or
elicitation), no session, one request in and one response out. Yet for every POST the SDK builds it:
on the handshake-era wire (2024-11-05 to 2025-11-25) a fresh session of memory streams, a task
group, a dispatcher and a server runner, ~0.5 ms per call; on the 2026-07-28 wire, the revision its
own client speaks by default, a runner, a connection, a session and the middleware chain for each
request, plus a deep copy of the server's identity and a walk of the tool's input schema for
``Mcp-Param-*`` headers — ~0.4 ms, more than the database needs for a whole ``query_records``
(``bench/inprocess.py``). So, after the bearer guard, :class:`DirectToolCalls` answers exactly those
requests itself and hands everything else — every other method, batches, notifications, write tools,
anything malformed or unusual, any request the SDK would reject — to the SDK unchanged.

What stays the SDK's: the request's surface validation for its protocol version
(``mcp_types.methods.validate_client_request``), the 2026-07-28 envelope ladder
(``classify_inbound_request``, ``find_duplicated_routing_header``, ``validate_mcp_param_headers``),
argument validation and the call and result conversion (``MCPServer.call_tool``), the per-version
shaping of the result (``serialize_server_result``; for the tools' compact results, asked once per
version with a probe of their form, and then written here with their own JSON spliced in as the
structured content, ``rowscope/tools/results.py``) and the mapping of a failure to its wire error
(``modern_error_data``, ``ERROR_CODE_HTTP_STATUS``). What is done here mirrors the SDK's transport
and handler step for step: the DNS-rebinding and Content-Type check (the SDK's own
``TransportSecurityMiddleware``), the Accept check, the mapping of a tool failure to an ``isError``
result, and on the 2026-07-28 wire the result's ``resultType`` and ``serverInfo`` stamp.
``tests/test_direct.py`` sends a corpus of requests on both wires through both paths and requires
identical answers. ``ROWSCOPE_DIRECT_TOOL_CALLS=false`` turns the direct path off.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pydantic_core
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.server.runner import modern_error_data
from mcp.server.streamable_http import check_accept_headers
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp.shared.exceptions import MCPError, NoBackChannelError
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    InboundLadderRejection,
    classify_inbound_request,
    find_duplicated_routing_header,
    validate_mcp_param_headers,
    x_mcp_header_map,
)
from mcp_types import SERVER_INFO_META_KEY, CallToolResult, Implementation, TextContent
from mcp_types.methods import serialize_server_result, validate_client_request
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from rowscope.server.bodies import read_body, replay
from rowscope.tools.results import CompactResult

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


@dataclass(frozen=True)
class _Call:
    """A request the direct path answers: its id, protocol version, tool and arguments."""

    id: int | str
    version: str
    name: str
    arguments: dict[str, Any]

    @property
    def modern(self) -> bool:
        return self.version in MODERN_PROTOCOL_VERSIONS


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
        # The input schemas of the direct tools that declare Mcp-Param-* headers (x-mcp-header), read
        # from the server's own listing on the first 2026-07-28 call: only their calls need the SDK's
        # header check, which for any other schema passes whatever the headers say.
        self._header_schemas: dict[str, Any] | None = None
        # The 2026-07-28 results' serverInfo stamp: the SDK's Implementation of this server, as the
        # SDK dumps it (its identity is fixed once the server is built).
        self._server_info: dict[str, Any] | None = None
        self._compact_shapes: dict[str, dict[str, Any] | None] = {}  # _compact_shape's answers

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
        status, data = await self._answer(request, call)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def _direct_call(self, request: Request, body: bytes) -> _Call | None:
        """The call, when this request is one this path answers exactly as the SDK would; ``None``
        hands it to the SDK. Every check is one the SDK makes for the request's wire: a request that
        fails any of them is the SDK's to answer (or reject), never this path's."""
        headers = request.headers
        version = headers.get("mcp-protocol-version")
        modern = version in MODERN_PROTOCOL_VERSIONS
        if not (modern or version in HANDSHAKE_PROTOCOL_VERSIONS) or "mcp-session-id" in headers:
            return None
        assert version is not None
        has_json, _ = check_accept_headers(request)
        if not has_json or await self.security.validate_request(request, is_post=True) is not None:
            return None
        try:
            # Each wire's own parser (the legacy transport's pydantic one, the 2026-07-28 handler's
            # json module), so this path and the SDK read the same JSON.
            message = json.loads(body) if modern else pydantic_core.from_json(body)
        except (ValueError, RecursionError):
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
        arguments = params.get("arguments")
        if arguments is not None and not isinstance(arguments, dict):
            return None
        call = _Call(request_id, version, params["name"], arguments or {})
        if modern and not await self._modern_envelope_holds(request, message, call):
            return None
        try:
            validate_client_request(METHOD, version, params)
        except (ValidationError, KeyError, ValueError):
            return None
        return call

    async def _modern_envelope_holds(self, request: Request, message: dict[str, Any], call: _Call) -> bool:
        """The 2026-07-28 handler's checks before dispatch, each by the SDK's own function: no routing
        header twice, the ``_meta`` envelope present and agreeing with the routing headers, and any
        ``Mcp-Param-*`` header agreeing with the argument the tool's schema binds it to."""
        # The raw header lines, decoded as Starlette decodes them; once no routing header is found
        # twice, a dict of them holds the same routing values as the SDK's dict(request.headers)
        # (it keeps a name's first value, this one its last), and those are all the ladder reads.
        lines = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]]
        if find_duplicated_routing_header(lines) is not None:
            return False
        if isinstance(classify_inbound_request(message, headers=dict(lines)), InboundLadderRejection):
            return False
        if self._header_schemas is None:
            listed = await self.server.list_tools()
            self._header_schemas = {
                tool.name: tool.input_schema
                for tool in listed
                if tool.name in self.tools and x_mcp_header_map(tool.input_schema)
            }
        schema = self._header_schemas.get(call.name)
        return schema is None or validate_mcp_param_headers(schema, call.arguments, request.headers) is None

    async def _answer(self, request: Request, call: _Call) -> tuple[int, bytes]:
        """The HTTP status and JSON-RPC response the SDK's handler gives this call on its wire."""
        request_context: ServerRequestContext[Any, Request] = ServerRequestContext(
            session=_NoBackChannel(),  # type: ignore[arg-type]
            lifespan_context=self.lifespan_context,
            protocol_version=call.version,
            method=METHOD,
            params={"name": call.name, "arguments": call.arguments},
            request_id=call.id,
            request=request,
        )
        context: Context[Any, Request] = Context(request_context=request_context, mcp_server=self.server)
        try:
            result = await self.server.call_tool(call.name, call.arguments, context)
        except MCPError as exc:
            if call.modern:  # the 2026-07-28 handler: its error ladder, and the code's HTTP status
                data = modern_error_data(exc)
                error = data.model_dump(mode="json", by_alias=True, exclude_none=True)
                return ERROR_CODE_HTTP_STATUS.get(data.code, 200), _error(call.id, error)
            error = {"code": exc.error.code, "message": exc.error.message}
            if exc.error.data is not None:
                error["data"] = exc.error.data
            return 200, _error(call.id, error)
        except Exception as exc:  # the SDK's tools/call handler: every tool failure is an isError result
            if isinstance(exc, ToolError) and not isinstance(exc, UnexpectedToolError):
                log.info("Tool %r failed: %r", call.name, str(exc))
            else:
                log.exception("Tool %r raised an unexpected exception", call.name)
            result = CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)
        template = self._compact_shape(call.version) if isinstance(result, CompactResult) else None
        if template is not None:
            # A compact result as the SDK shapes it for this version: its text block written here, its
            # structured content the JSON it was made from, not serialized again.
            assert isinstance(result, CompactResult)
            shaped = {"content": [{"type": "text", "text": result.text}], **template}
            return 200, self._response(call, shaped, result.serialized)
        dumped = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        return 200, self._response(call, serialize_server_result(METHOD, call.version, dumped), None)

    def _response(self, call: _Call, shaped: dict[str, Any], structured: bytes | None) -> bytes:
        """The JSON-RPC response's bytes: ``shaped`` as the result (stamped on the 2026-07-28 wire),
        with ``structured`` (JSON) as its structuredContent when given."""
        if call.modern:
            self._stamp(shaped)
        data = pydantic_core.to_json({"jsonrpc": "2.0", "id": call.id, "result": shaped})
        if structured is None:
            return data
        # data ends with the result object's and the response's closing braces.
        return b"".join((data[:-2], b',"structuredContent":', structured, b"}}"))

    def _compact_shape(self, version: str) -> dict[str, Any] | None:
        """The SDK's shape for ``version`` of a :class:`CompactResult`, less its text block and its
        structured content (the other fields' values, e.g. ``isError``); ``None`` when that shape
        changes the text block or does not keep the structured content as it is (it is new in
        2025-06-18). Asked of the SDK itself, once per version, with a probe of that form."""
        if version not in self._compact_shapes:
            probe = CompactResult.of(_Probe(probe=True))
            dumped = probe.model_dump(by_alias=True, mode="json", exclude_none=True)
            content, structured = copy.deepcopy(dumped["content"]), dumped["structuredContent"]
            shaped = serialize_server_result(METHOD, version, dumped)
            kept = (
                shaped.pop("content", None) == content and shaped.pop("structuredContent", None) == structured
            )
            self._compact_shapes[version] = shaped if kept else None
        return self._compact_shapes[version]

    def _stamp(self, result: dict[str, Any]) -> None:
        """What the SDK's runner adds to every 2026-07-28 result: ``resultType`` (required on that
        wire) and this server's identity under ``_meta`` (spec #3002), a value the result set wins."""
        if result.get("resultType") is None:
            result["resultType"] = "complete"
        if self._server_info is None:
            server = self.server
            identity = Implementation(
                name=server.name,
                version=server.version,
                title=server.title,
                description=server.description,
                website_url=server.website_url,
                icons=server.icons,
            )
            self._server_info = identity.model_dump(by_alias=True, mode="json", exclude_none=True)
        meta = result.get("_meta")
        if meta is None:
            result["_meta"] = {SERVER_INFO_META_KEY: self._server_info}
        elif isinstance(meta, Mapping) and meta.get(SERVER_INFO_META_KEY) is None:
            result["_meta"] = {**meta, SERVER_INFO_META_KEY: self._server_info}


def _error(request_id: int | str, error: dict[str, Any]) -> bytes:
    return pydantic_core.to_json({"jsonrpc": "2.0", "id": request_id, "error": error})


class _Probe(BaseModel):
    probe: bool
