"""The whole OAuth 2.1 flow driven by the MCP Python SDK's own OAuth client against ``rowscope
serve``: discovery, dynamic registration, PKCE, sign-in and consent, token, tool calls as the
signed-in user, refresh, and revocation."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa
from mcp.client import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata
from pydantic import AnyUrl

from tests.conftest import structured
from tests.oauth import Browser, MemoryStorage
from tests.servers import serve

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture(scope="module")
def base_url(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(database_url, tmp_path_factory.mktemp("oauth")) as url:
        yield url


def provider(base_url: str, browser: Browser, storage: MemoryStorage, **metadata: Any) -> OAuthClientProvider:
    pending: list[AuthorizationCodeResult] = []

    async def redirect_handler(url: str) -> None:
        query = await browser.authorize(url)
        pending.append(
            AuthorizationCodeResult(code=query["code"], state=query.get("state"), iss=query.get("iss"))
        )

    async def callback_handler() -> AuthorizationCodeResult:
        return pending.pop()

    return OAuthClientProvider(
        server_url=f"{base_url}/mcp",
        client_metadata=OAuthClientMetadata(
            client_name="SDK test client",
            redirect_uris=[AnyUrl("http://127.0.0.1:33418/callback")],
            grant_types=["authorization_code", "refresh_token"],
            token_endpoint_auth_method="none",
            **metadata,
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )


async def test_the_sdk_oauth_client_signs_in_and_calls_tools_as_the_user(base_url: str) -> None:
    """MCP authorization 2025-11-25: discovery → DCR → PKCE → consent → token → calls as the user."""
    browser, storage = Browser(base_url, email="bob@example.com"), MemoryStorage()
    try:
        async with (
            httpx2.AsyncClient(auth=provider(base_url, browser, storage), timeout=30) as http,
            Client(streamable_http_client(f"{base_url}/mcp", http_client=http)) as client,
        ):
            me = structured(await client.call_tool("query_records", {"model": "UserProfile"}))
            sparks = structured(await client.call_tool("list_sparks", {}))
    finally:
        await browser.aclose()
    assert [row["email"] for row in me["rows"]] == ["bob@example.com"]
    assert "Bob's Private Journal" in {s["name"] for s in sparks["sparks"]}
    assert storage.tokens is not None and storage.tokens.scope == "rowscope:read rowscope:write"
    assert any("Allow SDK test client" in page for page in browser.pages)


async def test_a_client_on_localhost_completes_the_flow_though_the_public_url_names_127_0_0_1(
    base_url: str, admin: sa.Engine
) -> None:
    """Spec-required: RFC 9728 §3.3 (the client refuses metadata whose resource is not the URL it
    used) and RFC 8707 (the token is bound to that resource). The server's public URL is
    http://127.0.0.1:PORT, localhost:PORT is among its allowed hosts, and the SDK's client uses
    http://localhost:PORT/mcp: discovery, DCR, consent, token and a tool call all succeed."""
    local = base_url.replace("127.0.0.1", "localhost")
    browser, storage = Browser(base_url, email="bob@example.com"), MemoryStorage()  # pages: the issuer's
    try:
        async with (
            httpx2.AsyncClient(auth=provider(local, browser, storage), timeout=30) as http,
            Client(streamable_http_client(f"{local}/mcp", http_client=http)) as client,
        ):
            me = structured(await client.call_tool("query_records", {"model": "UserProfile"}))
    finally:
        await browser.aclose()
    assert [row["email"] for row in me["rows"]] == ["bob@example.com"]
    assert storage.tokens is not None
    digest = hashlib.sha256(storage.tokens.access_token.encode()).hexdigest()
    with admin.connect() as conn:
        resource = conn.execute(
            sa.text("SELECT resource FROM oauth_tokens WHERE access_hash = :h"), {"h": digest}
        ).scalar_one()
    assert resource == f"{local}/mcp"
