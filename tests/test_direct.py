"""The direct tools/call path (rowscope/server/direct.py) answers exactly as the MCP SDK does.

Two real ``rowscope serve`` processes on the same database, one with the direct path and one
without (``ROWSCOPE_DIRECT_TOOL_CALLS=false``), receive the same raw HTTP requests: well-formed
read calls in every protocol version, on the handshake-era wire and on the 2026-07-28 one, tool
failures, invalid arguments, and requests the direct path must hand to the SDK (other methods,
write tools, batches, bad headers, a broken or disagreeing 2026-07-28 envelope, malformed JSON). Every
answer must match in status and JSON body. A separate check proves the direct path is the one that
answered the well-formed calls, so the comparison is between two paths, not one path twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx2
import pytest
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import Field
from starlette.requests import Request

from rowscope.server.app import build_mcp, build_runtime
from rowscope.server.direct import DirectToolCalls
from rowscope.server.settings import Settings
from rowscope.tools import TOOLS
from tests.servers import serve

HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": "2025-11-25",
}


def call(name: str, arguments: Any = None, *, request_id: Any = 1, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, **params}
    if arguments is not None:
        body["arguments"] = arguments
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": body}


MODERN = "2026-07-28"
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "test_direct", "version": "1"},
}


def modern(name: Any, arguments: Any = None, *, meta: Any = ENVELOPE, **params: Any) -> dict[str, Any]:
    """A tools/call on the 2026-07-28 wire: the client's envelope in ``params._meta``."""
    return call(name, arguments, **params, **({} if meta is None else {"_meta": meta}))


@dataclass
class Case:
    id: str
    body: Any
    headers: dict[str, str]
    direct: bool  # whether the direct path answers it (else the SDK does, on both servers)
    twice: tuple[str, ...] = ()  # headers sent a second time, with the same value


def case(id: str, body: Any, *, direct: bool, **headers: str) -> Case:
    return Case(id, body, HEADERS | {k.replace("_", "-"): v for k, v in headers.items()}, direct)


def modern_case(id: str, body: Any, *, direct: bool, twice: tuple[str, ...] = (), **headers: str) -> Case:
    """A case on the 2026-07-28 wire, with the routing headers a client derives from ``body``."""
    name = body.get("params", {}).get("name") if isinstance(body, dict) else None
    routing = {
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": body.get("method") if isinstance(body, dict) else "",
    }
    if isinstance(name, str):
        routing["Mcp-Name"] = name
    given = {k.replace("_", "-"): v for k, v in headers.items()}
    return Case(id, body, HEADERS | routing | given, direct, twice)


CASES = [
    case("query default", call("query_records", {"model": "PortfolioItem"}), direct=True),
    case(
        "query filtered, selected, ordered, paged",
        call(
            "query_records",
            {
                "model": "PortfolioItem",
                "where": {"OR": [{"kind": "link"}, {"title": {"contains": "a", "mode": "insensitive"}}]},
                "select": ["title", "kind", "created_at"],
                "order_by": [{"title": "desc"}],
                "take": 2,
            },
        ),
        direct=True,
    ),
    case(
        "query with an IN list",
        call("query_records", {"model": "Spark", "where": {"visibility": {"in": ["private", "team"]}}}),
        direct=True,
    ),
    case(
        "count",
        call("count_records", {"model": "Spark", "where": {"NOT": {"visibility": "private"}}}),
        direct=True,
    ),
    case(
        "query with a boolean and a date filter",
        call(
            "query_records",
            {"model": "PortfolioItem", "where": {"is_watched": False, "created_at": {"gte": "2020-01-01"}}},
        ),
        direct=True,
    ),
    case("list sparks", call("list_sparks", {}), direct=True),
    case("search knowledge", call("search_knowledge", {"query": "brand guidelines"}), direct=True),
    case("string id", call("query_records", {"model": "Team"}, request_id="req-7"), direct=True),
    case("arguments left out", call("list_sparks"), direct=True),
    case(
        "_meta with a progress token",
        call("count_records", {"model": "Spark"}, _meta={"progressToken": "p1"}),
        direct=True,
    ),
    case("unknown model", call("query_records", {"model": "UserProfile"}), direct=True),
    case("unknown field", call("query_records", {"model": "Spark", "where": {"secret": 1}}), direct=True),
    case(
        "bad operator",
        call("query_records", {"model": "Spark", "where": {"title": {"regex": "."}}}),
        direct=True,
    ),
    case("take out of range", call("query_records", {"model": "Spark", "take": 0}), direct=True),
    case("missing required argument", call("query_records", {}), direct=True),
    case("wrong argument type", call("count_records", {"model": 5}), direct=True),
    case("bad cursor", call("query_records", {"model": "Spark", "cursor": "not-a-cursor"}), direct=True),
    case(
        "protocol 2025-06-18",
        call("query_records", {"model": "Team"}),
        direct=True,
        MCP_Protocol_Version="2025-06-18",
    ),
    case(
        "protocol 2025-03-26",
        call("query_records", {"model": "Team"}),
        direct=True,
        MCP_Protocol_Version="2025-03-26",
    ),
    case("Accept: application/json only", call("list_sparks", {}), direct=True, Accept="application/json"),
    # Everything below is the SDK's to answer, on both servers.
    case("unknown tool", call("drop_tables", {}), direct=False),
    case(
        "write tool",
        call(
            "remove_training_content",
            {
                "spark_id": "00000000-0000-0000-0000-000000000000",
                "training_item_id": "00000000-0000-0000-0000-000000000000",
            },
        ),
        direct=False,
    ),
    case("tools/list", {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}, direct=False),
    case("ping", {"jsonrpc": "2.0", "id": 2, "method": "ping"}, direct=False),
    case("notification", {"jsonrpc": "2.0", "method": "notifications/initialized"}, direct=False),
    case("batch", [call("list_sparks", {})], direct=False),
    case("task-augmented call", call("list_sparks", {}, task={"ttl": 1000}), direct=False),
    case("arguments not an object", call("list_sparks", [1, 2]), direct=False),
    case("name not a string", call(7, {}), direct=False),  # type: ignore[arg-type]
    case("null id", call("list_sparks", {}, request_id=None), direct=False),
    case("jsonrpc 1.0", call("list_sparks", {}) | {"jsonrpc": "1.0"}, direct=False),
    case("no protocol version header", call("list_sparks", {}), direct=False, MCP_Protocol_Version=""),
    case(
        "unknown protocol version", call("list_sparks", {}), direct=False, MCP_Protocol_Version="2099-01-01"
    ),
    case("session id header", call("list_sparks", {}), direct=False, Mcp_Session_Id="abc"),
    case("Accept: text/event-stream only", call("list_sparks", {}), direct=False, Accept="text/event-stream"),
    case("Content-Type text/plain", call("list_sparks", {}), direct=False, Content_Type="text/plain"),
    case("foreign Host", call("list_sparks", {}), direct=False, Host="evil.example:80"),
    case("foreign Origin", call("list_sparks", {}), direct=False, Origin="https://evil.example"),
    case("malformed JSON", b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {', direct=False),
    # The 2026-07-28 wire: each request carries its own envelope; there is no session.
    modern_case("2026: query default", modern("query_records", {"model": "PortfolioItem"}), direct=True),
    modern_case(
        "2026: query filtered, ordered, paged",
        modern(
            "query_records",
            {
                "model": "Spark",
                "where": {"NOT": {"visibility": "private"}},
                "order_by": [{"title": "desc"}],
                "take": 2,
            },
        ),
        direct=True,
    ),
    modern_case("2026: count", modern("count_records", {"model": "Spark"}), direct=True),
    modern_case("2026: list sparks", modern("list_sparks", {}), direct=True),
    modern_case(
        "2026: search knowledge", modern("search_knowledge", {"query": "brand guidelines"}), direct=True
    ),
    modern_case("2026: string id", modern("query_records", {"model": "Team"}, request_id="r-9"), direct=True),
    modern_case("2026: arguments left out", modern("list_sparks"), direct=True),
    modern_case("2026: unknown model", modern("query_records", {"model": "UserProfile"}), direct=True),
    modern_case("2026: missing required argument", modern("query_records", {}), direct=True),
    modern_case("2026: wrong argument type", modern("count_records", {"model": 5}), direct=True),
    modern_case(
        "2026: envelope without clientInfo",
        modern("list_sparks", {}, meta={k: v for k, v in ENVELOPE.items() if not k.endswith("clientInfo")}),
        direct=True,
    ),
    modern_case(
        "2026: envelope with a progress token",
        modern("count_records", {"model": "Spark"}, meta=ENVELOPE | {"progressToken": "p2"}),
        direct=True,
    ),
    modern_case(
        "2026: an Mcp-Param header no tool declares",
        modern("count_records", {"model": "Spark"}),
        direct=True,
        Mcp_Param_Model="Spark",
    ),
    modern_case(
        "2026: Accept: application/json only",
        modern("list_sparks", {}),
        direct=True,
        Accept="application/json",
    ),
    # ... and what the SDK must answer (or reject) on that wire.
    modern_case("2026: no envelope", modern("list_sparks", {}, meta=None), direct=False),
    modern_case(
        "2026: envelope without capabilities",
        modern("list_sparks", {}, meta={k: v for k, v in ENVELOPE.items() if not k.endswith("Capabilities")}),
        direct=False,
    ),
    modern_case("2026: envelope not an object", modern("list_sparks", {}, meta="2026-07-28"), direct=False),
    modern_case(
        "2026: capabilities not an object",
        modern("list_sparks", {}, meta=ENVELOPE | {"io.modelcontextprotocol/clientCapabilities": "all"}),
        direct=False,
    ),
    modern_case(
        "2026: clientInfo not an object",
        modern("list_sparks", {}, meta=ENVELOPE | {"io.modelcontextprotocol/clientInfo": 5}),
        direct=False,
    ),
    modern_case(
        "2026: clientInfo without a version",
        modern("list_sparks", {}, meta=ENVELOPE | {"io.modelcontextprotocol/clientInfo": {"name": "x"}}),
        direct=False,
    ),
    modern_case(
        "2026: envelope names an older version",
        modern("list_sparks", {}, meta=ENVELOPE | {"io.modelcontextprotocol/protocolVersion": "2025-11-25"}),
        direct=False,
    ),
    modern_case(
        "2026: an unknown version in header and envelope",
        modern("list_sparks", {}, meta=ENVELOPE | {"io.modelcontextprotocol/protocolVersion": "2099-01-01"}),
        direct=False,
        MCP_Protocol_Version="2099-01-01",
    ),
    modern_case(
        "2026: Mcp-Method disagrees", modern("list_sparks", {}), direct=False, Mcp_Method="tools/list"
    ),
    modern_case("2026: Mcp-Method missing", modern("list_sparks", {}), direct=False, Mcp_Method=""),
    modern_case(
        "2026: Mcp-Name disagrees", modern("list_sparks", {}), direct=False, Mcp_Name="count_records"
    ),
    modern_case("2026: Mcp-Name twice", modern("list_sparks", {}), direct=False, twice=("Mcp-Name",)),
    modern_case("2026: unknown tool", modern("drop_tables", {}), direct=False),
    modern_case(
        "2026: write tool",
        modern(
            "remove_training_content",
            {
                "spark_id": "00000000-0000-0000-0000-000000000000",
                "training_item_id": "00000000-0000-0000-0000-000000000000",
            },
        ),
        direct=False,
    ),
    modern_case(
        "2026: tools/list",
        {"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {"_meta": ENVELOPE}},
        direct=False,
    ),
    modern_case(
        "2026: notification",
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}},
        direct=False,
    ),
    modern_case("2026: batch", [modern("list_sparks", {})], direct=False, Mcp_Method="tools/call"),
    modern_case("2026: with requestState", modern("list_sparks", {}, requestState="opaque"), direct=False),
    modern_case("2026: session id header", modern("list_sparks", {}), direct=False, Mcp_Session_Id="abc"),
    modern_case(
        "2026: Accept: text/event-stream only",
        modern("list_sparks", {}),
        direct=False,
        Accept="text/event-stream",
    ),
    modern_case(
        "2026: foreign Origin", modern("list_sparks", {}), direct=False, Origin="https://evil.example"
    ),
    modern_case(
        "2026: malformed JSON",
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {',
        direct=False,
        Mcp_Method="tools/call",
    ),
]


@pytest.fixture(scope="module")
def servers(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    with (
        serve(database_url, tmp_path_factory.mktemp("direct")) as direct,
        serve(database_url, tmp_path_factory.mktemp("sdk"), ROWSCOPE_DIRECT_TOOL_CALLS="false") as sdk,
    ):
        yield direct, sdk


@pytest.fixture(scope="module")
def key(make_api_key: Callable[..., str]) -> str:
    return make_api_key("alice@example.com", "test_direct alice")


def header_lines(item: Case) -> list[tuple[str, str]]:
    """The case's headers as sent: empty values left out, ``twice`` ones repeated."""
    lines = [(k, v) for k, v in item.headers.items() if v]
    return lines + [(k, v) for k, v in lines if k in item.twice]


def post(base_url: str, key: str, item: Case) -> tuple[int, Any]:
    content = item.body if isinstance(item.body, bytes) else json.dumps(item.body).encode()
    headers = [*header_lines(item), ("Authorization", f"Bearer {key}")]
    if "Host" not in item.headers:
        headers.append(("Host", base_url.split("://", 1)[1]))
    with httpx2.Client(timeout=60) as http:
        response = http.post(f"{base_url}/mcp", content=content, headers=headers)
    if response.headers.get("content-type", "").startswith("application/json") and response.content:
        return response.status_code, response.json()
    return response.status_code, response.text


@pytest.mark.parametrize("item", CASES, ids=[c.id for c in CASES])
def test_the_direct_path_answers_as_the_sdk_does(servers: tuple[str, str], key: str, item: Case) -> None:
    direct, sdk = servers
    assert post(direct, key, item) == post(sdk, key, item)


def test_a_cursor_from_either_path_reads_the_same_next_page(servers: tuple[str, str], key: str) -> None:
    direct, sdk = servers
    first = case("page 1", call("query_records", {"model": "Spark", "take": 1}), direct=True)
    status, answer = post(direct, key, first)
    cursor = answer["result"]["structuredContent"]["next_cursor"]
    assert status == 200 and cursor
    second = case(
        "page 2", call("query_records", {"model": "Spark", "take": 1, "cursor": cursor}), direct=True
    )
    assert post(direct, key, second) == post(sdk, key, second)
    assert (
        post(direct, key, second)[1]["result"]["structuredContent"]["rows"]
        != answer["result"]["structuredContent"]["rows"]
    )


def test_the_corpus_says_which_requests_the_direct_path_takes(database_url: str, tmp_path: Path) -> None:
    """The comparison above is only worth something if the direct path really answered the cases
    marked direct and declined the rest: ask it, on the same requests, with rowscope's own tools."""
    settings = TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=["127.0.0.1:8000"], allowed_origins=[]
    )
    runtime = build_runtime(
        Settings(database_url=database_url, data_dir=tmp_path, openai_api_key=None), database_url
    )
    server = build_mcp(runtime)
    tools = frozenset(spec.fn.__name__ for spec in TOOLS if spec.read_only)
    path = DirectToolCalls(app=None, server=server, lifespan_context=runtime, security=settings, tools=tools)  # type: ignore[arg-type]

    async def taken(item: Case) -> bool:
        content = item.body if isinstance(item.body, bytes) else json.dumps(item.body).encode()
        lines = [(k.lower(), v) for k, v in header_lines(item)]
        if "host" not in dict(lines):
            lines.append(("host", "127.0.0.1:8000"))
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/mcp",
            "headers": [(k.encode(), v.encode()) for k, v in lines],
        }
        return await path._direct_call(Request(scope), content) is not None

    import anyio

    for item in CASES:
        assert anyio.run(taken, item) == item.direct, item.id
    versions = {item.headers["MCP-Protocol-Version"] for item in CASES if item.direct}
    assert versions >= {"2025-11-25", MODERN}
    # And it wrote the tools' results itself (their JSON spliced in, not serialized again) on every
    # version it answered: the SDK's shape of a compact result is known for each of them.
    for version in versions:
        assert path._compact_shape(version) is not None, version


def test_a_tool_that_declares_an_mcp_param_header_has_it_checked_as_the_sdk_does(tmp_path: Path) -> None:
    """rowscope's tools declare no ``Mcp-Param-*`` header, so the corpus cannot reach that check:
    a server whose tool binds its ``model`` argument to ``Mcp-Param-Model`` shows the direct path
    takes a call whose header agrees and hands the SDK one that disagrees or leaves it out."""
    server: MCPServer[Any] = MCPServer("headers")

    @server.tool()
    def tally(model: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Model"})]) -> str:
        return model

    settings = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    path = DirectToolCalls(
        app=None, server=server, lifespan_context=None, security=settings, tools=frozenset({"tally"})
    )  # type: ignore[arg-type]

    async def taken(**headers: str) -> bool:
        item = modern_case("tally", modern("tally", {"model": "Spark"}), direct=True, **headers)
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/mcp",
            "headers": [(k.lower().encode(), v.encode()) for k, v in header_lines(item)],
        }
        return await path._direct_call(Request(scope), json.dumps(item.body).encode()) is not None

    import anyio

    assert anyio.run(lambda: taken(Mcp_Param_Model="Spark"))
    assert not anyio.run(lambda: taken(Mcp_Param_Model="Team"))
    assert not anyio.run(lambda: taken())
