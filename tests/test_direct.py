"""The direct tools/call path (rowscope/server/direct.py) answers exactly as the MCP SDK does.

Two real ``rowscope serve`` processes on the same database, one with the direct path and one
without (``ROWSCOPE_DIRECT_TOOL_CALLS=false``), receive the same raw HTTP requests: well-formed
read calls in every protocol version, tool failures, invalid arguments, and requests the direct
path must hand to the SDK (other methods, write tools, batches, bad headers, malformed JSON). Every
answer must match in status and JSON body. A separate check proves the direct path is the one that
answered the well-formed calls, so the comparison is between two paths, not one path twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request

from rowscope.server.direct import DirectToolCalls
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


@dataclass
class Case:
    id: str
    body: Any
    headers: dict[str, str]
    direct: bool  # whether the direct path answers it (else the SDK does, on both servers)


def case(id: str, body: Any, *, direct: bool, **headers: str) -> Case:
    return Case(id, body, HEADERS | {k.replace("_", "-"): v for k, v in headers.items()}, direct)


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
        "protocol 2025-03-26 (no structured content)",
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


def post(base_url: str, key: str, item: Case) -> tuple[int, Any]:
    content = item.body if isinstance(item.body, bytes) else json.dumps(item.body).encode()
    headers = {k: v for k, v in item.headers.items() if v} | {"Authorization": f"Bearer {key}"}
    if "Host" not in headers:
        headers["Host"] = base_url.split("://", 1)[1]
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


def test_the_corpus_says_which_requests_the_direct_path_takes(tmp_path: Path) -> None:
    """The comparison above is only worth something if the direct path really answered the cases
    marked direct and declined the rest: ask it, on the same requests."""
    settings = TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=["127.0.0.1:8000"], allowed_origins=[]
    )
    tools = frozenset({"query_records", "count_records", "list_sparks", "search_knowledge"})
    path = DirectToolCalls(app=None, server=None, lifespan_context=None, security=settings, tools=tools)  # type: ignore[arg-type]

    async def taken(item: Case) -> bool:
        content = item.body if isinstance(item.body, bytes) else json.dumps(item.body).encode()
        headers = {k.lower(): v for k, v in item.headers.items() if v}
        headers.setdefault("host", "127.0.0.1:8000")
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/mcp",
            "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        }
        return await path._direct_call(Request(scope), content) is not None

    import anyio

    for item in CASES:
        assert anyio.run(taken, item) == item.direct, item.id
