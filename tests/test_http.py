"""``rowscope serve`` as a real process on a loopback port: Streamable HTTP at /mcp behind API keys,
driven by the SDK's client for the tools and by raw HTTP for status codes and headers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
import psutil
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from rowscope.server import demo
from rowscope.tools import TOOLS
from tests.conftest import error_text, structured
from tests.servers import serve

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SPARKS = {s["name"]: s for s in demo.SPARKS}
ALICE_COACH = str(SPARKS["Alice's Writing Coach"]["id"])


@dataclass(frozen=True)
class Keys:
    alice: str
    bob: str
    revoked: str


@pytest.fixture(scope="module")
def keys(make_api_key: Callable[..., str]) -> Keys:
    """API keys made with ``accounts.create_key`` (one revoked); deleted at the end of the session."""
    return Keys(
        alice=make_api_key("alice@example.com", "test_http alice"),
        bob=make_api_key("bob@example.com", "test_http bob"),
        revoked=make_api_key("alice@example.com", "test_http revoked", revoked=True),
    )


@pytest.fixture(scope="module")
def base_url(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``rowscope serve --port N`` in a child process, up once GET /health answers."""
    with serve(database_url, tmp_path_factory.mktemp("serve")) as url:
        yield url


@asynccontextmanager
async def mcp_client(base_url: str, key: str) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(f"{base_url}/mcp", http_client=http)) as client,
    ):
        yield client


def raw_tools_list(base_url: str, **headers: str) -> httpx2.Response:
    """A bare JSON-RPC tools/list POST (2025-11-25 era, no session: the server is stateless)."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    base = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
    with httpx2.Client(timeout=10) as http:
        return http.post(f"{base_url}/mcp", json=body, headers=base | headers)


async def test_every_tool_works_end_to_end_over_streamable_http_with_an_api_key(
    base_url: str, keys: Keys, database_url: str
) -> None:
    """Our choice: the same six tools as stdio, reached through the bearer-authenticated HTTP app."""
    text = f"HTTP round trip marker {uuid.uuid4()}: Alice outlines essays with index cards."
    async with mcp_client(base_url, keys.alice) as client:
        tools = (await client.list_tools()).tools
        assert {t.name for t in tools} == {spec.fn.__name__ for spec in TOOLS}
        sparks = structured(await client.call_tool("list_sparks", {}))
        rows = structured(await client.call_tool("query_records", {"model": "ChatSession"}))
        count = structured(await client.call_tool("count_records", {"model": "PortfolioItem"}))
        hits = structured(
            await client.call_tool("search_knowledge", {"query": "tagline colours", "top_k": 2})
        )
        added = structured(
            await client.call_tool("add_training_content", {"spark_id": ALICE_COACH, "content": text})
        )
        removed = structured(
            await client.call_tool(
                "remove_training_content", {"spark_id": ALICE_COACH, "item_id": added["item_id"]}
            )
        )
        failure = await client.call_tool("count_records", {"model": "NoSuchModel"})
    assert len(sparks["sparks"]) == 3
    assert [r["title"] for r in rows["rows"]] == ["Tightening the intro"]
    assert count["count"] == 2
    assert hits["hits"]
    assert added["chunks_added"] == 1
    assert removed["chunks_removed"] == 1
    assert "NoSuchModel" in error_text(failure)


@pytest.mark.parametrize(
    ("user", "email", "sparks"),
    [
        pytest.param("alice", "alice@example.com", 3, id="alice-key"),
        pytest.param("bob", "bob@example.com", 4, id="bob-key"),
    ],
)
async def test_calls_run_as_the_user_who_owns_the_api_key(
    base_url: str, keys: Keys, user: str, email: str, sparks: int
) -> None:
    """Our choice: an API key is its owner's credential; the token's subject picks the rows."""
    async with mcp_client(base_url, getattr(keys, user)) as client:
        me = structured(await client.call_tool("query_records", {"model": "UserProfile"}))
        visible = structured(await client.call_tool("list_sparks", {}))
    assert [r["email"] for r in me["rows"]] == [email]
    assert len(visible["sparks"]) == sparks


def test_a_request_without_a_token_gets_401_pointing_at_the_resource_metadata(base_url: str) -> None:
    """Spec-required: MCP authorization (2025-11-25) and RFC 9728 §5.1 WWW-Authenticate resource_metadata."""
    response = raw_tools_list(base_url)
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'resource_metadata="{base_url}/.well-known/oauth-protected-resource/mcp"' in challenge


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("not-a-key", id="garbage"),
        pytest.param("rsk_" + "x" * 43, id="unknown-rsk-key"),
        pytest.param("revoked", id="revoked-key"),
    ],
)
def test_a_bad_or_revoked_token_gets_401(base_url: str, keys: Keys, token: str) -> None:
    """Spec-required: RFC 6750 §3.1 invalid_token answers 401."""
    if token == "revoked":
        token = keys.revoked
    response = raw_tools_list(base_url, Authorization=f"Bearer {token}")
    assert response.status_code == 401
    assert "invalid_token" in response.headers["www-authenticate"]


def test_a_live_key_passes_the_raw_http_checks(base_url: str, keys: Keys) -> None:
    """Our choice: the control case for the rejections around it (same request, good credential)."""
    response = raw_tools_list(base_url, Authorization=f"Bearer {keys.alice}")
    assert response.status_code == 200
    assert len(response.json()["result"]["tools"]) == 6


def test_a_foreign_host_header_is_rejected(base_url: str, keys: Keys) -> None:
    """Spec-required: MCP transports (Streamable HTTP, security warning) - DNS-rebinding protection."""
    response = raw_tools_list(base_url, Authorization=f"Bearer {keys.alice}", Host="evil.example.com")
    assert response.status_code == 421


def test_a_foreign_origin_is_rejected(base_url: str, keys: Keys) -> None:
    """Spec-required: MCP transports (Streamable HTTP) - servers MUST validate the Origin header."""
    response = raw_tools_list(
        base_url, Authorization=f"Bearer {keys.alice}", Origin="https://evil.example.com"
    )
    assert response.status_code == 403


@pytest.mark.parametrize(
    "header",
    [
        pytest.param({"Host": "localhost:{port}"}, id="localhost-host"),
        pytest.param({"Origin": "{base_url}"}, id="own-origin"),
    ],
)
def test_the_servers_own_host_and_origin_are_accepted(
    base_url: str, keys: Keys, header: dict[str, str]
) -> None:
    """Our choice: the control cases for the two rejections above (only foreign values are refused)."""
    port = base_url.rsplit(":", 1)[1]
    headers = {k: v.format(port=port, base_url=base_url) for k, v in header.items()}
    response = raw_tools_list(base_url, Authorization=f"Bearer {keys.alice}", **headers)
    assert response.status_code == 200


def test_health_answers_200_without_credentials(base_url: str) -> None:
    """Our choice: a liveness probe that needs no key."""
    response = httpx2.get(f"{base_url}/health", timeout=10)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_protected_resource_metadata_names_the_exact_mcp_url(base_url: str) -> None:
    """Spec-required: RFC 9728 §3.3 - `resource` is identical to the protected resource's URL."""
    response = httpx2.get(f"{base_url}/.well-known/oauth-protected-resource/mcp", timeout=10)
    assert response.status_code == 200
    assert response.json()["resource"] == f"{base_url}/mcp"


def test_two_workers_share_the_port_and_stop_with_the_server(
    database_url: str, keys: Keys, tmp_path: Path
) -> None:
    """Our choice (issue 4, one worker per core): ``--workers 2`` answers on one port, and
    stopping the server stops every worker."""
    with serve(database_url, tmp_path, ROWSCOPE_WORKERS="2") as url:
        parent = next(
            p for p in psutil.process_iter(["cmdline"]) if url.rsplit(":", 1)[1] in (p.info["cmdline"] or [])
        )
        workers = parent.children()
        assert len(workers) == 2
        for _ in range(6):  # a fresh connection each time, so the kernel can pick either worker
            response = raw_tools_list(url, Authorization=f"Bearer {keys.alice}")
            assert response.status_code == 200
            assert {t["name"] for t in response.json()["result"]["tools"]} == {s.fn.__name__ for s in TOOLS}
    _, alive = psutil.wait_procs(workers, timeout=15)
    assert alive == []


def test_the_served_app_freezes_what_it_built_before_serving(database_url: str, tmp_path: Path) -> None:
    """Once started, the HTTP app puts everything built so far out of the cyclic collector's reach
    (``gc.freeze``): a full collection then walks only what came after, instead of stopping every
    request for the ~80 ms it takes to walk the startup's ~155,000 objects (bench/README.md)."""
    import gc

    from starlette.testclient import TestClient

    from rowscope.server.app import build_http_app, build_runtime
    from rowscope.server.settings import Settings

    settings = Settings(database_url=database_url, data_dir=tmp_path, openai_api_key=None)
    app = build_http_app(build_runtime(settings, database_url))
    gc.unfreeze()
    try:
        with TestClient(app) as client:  # the lifespan runs
            assert client.get("/health").status_code == 200
            assert gc.get_freeze_count() > 50_000
    finally:
        gc.unfreeze()  # this test process's own objects back in reach
