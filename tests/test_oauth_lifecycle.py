"""rowscope's authorization server doing what it should, over raw HTTP against ``rowscope serve``:
discovery documents, the authorization response, consent memory, token responses, refresh
rotation, revocation (RFC 7009, the connections page, the CLI), confidential clients, the
registrations Claude and ChatGPT send, and secrets stored only as hashes.

The request helpers are the negative catalogue's (``tests/test_oauth_negative.py``)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator

import httpx2
import pytest
from sqlalchemy import text

from tests.oauth import hidden_fields, pkce
from tests.oauth_server import (
    BOTH,
    REDIRECT,
    STATE,
    Registered,
    Server,
    approve,
    assert_bearer_refused,
    assert_oauth_error,
    hashed,
    query_of,
    sign_in,
)
from tests.servers import ROWSCOPE, child_env

pytestmark = pytest.mark.slow

HEX64 = re.compile(r"^[0-9a-f]{64}$")


@pytest.fixture(scope="module")
def alice(server: Server) -> Iterator[httpx2.Client]:
    browser = sign_in(server.url)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def carol(server: Server) -> Iterator[httpx2.Client]:
    browser = sign_in(server.url, "carol@example.com")
    try:
        yield browser
    finally:
        browser.close()


def rowscope(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ROWSCOPE, *args],
        env=child_env(DATABASE_URL=database_url),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


# -- discovery ----------------------------------------------------------------------------------------


def test_authorization_server_metadata_advertises_what_mcp_clients_require(server: Server) -> None:
    """Spec-required: RFC 8414 §2-§3 and MCP authorization 2025-11-25 (PKCE S256, DCR, CIMD, RFC 9207)."""
    response = server.http.get(f"{server.url}/.well-known/oauth-authorization-server")
    assert response.status_code == 200
    assert f'"issuer":"{server.url}"' in response.text.replace(" ", "")
    meta = response.json()
    assert meta["issuer"] == server.url
    assert meta["authorization_endpoint"] == f"{server.url}/authorize"
    assert meta["token_endpoint"] == f"{server.url}/token"
    assert meta["registration_endpoint"] == f"{server.url}/register"
    assert meta["revocation_endpoint"] == f"{server.url}/revoke"
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert "none" in meta["token_endpoint_auth_methods_supported"]
    assert meta["client_id_metadata_document_supported"] is True
    assert meta["authorization_response_iss_parameter_supported"] is True
    assert meta["scopes_supported"] == ["rowscope:read", "rowscope:write"]
    assert meta["response_types_supported"] == ["code"]
    assert {"authorization_code", "refresh_token"} <= set(meta["grant_types_supported"])


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/.well-known/oauth-protected-resource/mcp", id="path-inserted"),
        pytest.param("/.well-known/oauth-protected-resource", id="root"),
    ],
)
def test_protected_resource_metadata_names_the_exact_mcp_url_and_this_issuer(
    server: Server, path: str
) -> None:
    """Spec-required: RFC 9728 §3 (both well-known forms, MCP discovery) and §3.3 (resource identical)."""
    response = server.http.get(f"{server.url}{path}")
    assert response.status_code == 200
    meta = response.json()
    assert meta["resource"] == f"{server.url}/mcp"
    assert meta["authorization_servers"] == [server.url]
    assert meta["bearer_methods_supported"] == ["header"]


def test_an_unauthenticated_mcp_request_gets_an_absolute_resource_metadata_challenge(server: Server) -> None:
    """Spec-required: RFC 9728 §5.1 and RFC 6750 §3 (scope; no error code when no token was sent)."""
    response = server.mcp(None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == (
        f'Bearer resource_metadata="{server.url}/.well-known/oauth-protected-resource/mcp", '
        'scope="rowscope:read rowscope:write"'
    )


# -- authorization ------------------------------------------------------------------------------------


def test_the_authorization_response_carries_the_code_state_and_iss(
    server: Server, alice: httpx2.Client
) -> None:
    """Spec-required: RFC 6749 §4.1.2 (state echoed) and RFC 9207 §2 (iss identical to the issuer)."""
    client = server.register()
    _, challenge = pkce()
    response = alice.get(f"{server.url}/authorize", params=server.authorize_query(client, challenge))
    response = approve(server.url, alice, response)
    assert response.status_code == 303
    assert response.headers["location"].startswith(REDIRECT + "?")
    query = query_of(response)
    assert query["state"] == STATE
    assert query["iss"] == server.url
    assert query["code"].startswith("rsc_")


@pytest.mark.parametrize(
    "registered_scope",
    [pytest.param(None, id="no-registered-scope"), pytest.param("claudeai", id="unknown-registered-scope")],
)
def test_an_authorization_without_scope_gets_both_scopes(
    server: Server, alice: httpx2.Client, registered_scope: str | None
) -> None:
    """Our choice (RFC 6749 §3.3 allows a default): no scope asked means everything, shown on consent."""
    client = server.register(**({"scope": registered_scope} if registered_scope else {}))
    granted = server.tokens(alice, client, scope=None)
    assert granted["scope"] == BOTH


def test_consent_is_remembered_per_user_client_and_scope_and_a_wider_scope_asks_again(
    server: Server, alice: httpx2.Client
) -> None:
    """Our choice (RFC 6749 §10.2 leaves it open): approved scopes are not asked for twice."""
    client = server.register(client_name="remembered consent")
    _, challenge = pkce()
    first = alice.get(
        f"{server.url}/authorize", params=server.authorize_query(client, challenge, scope="rowscope:read")
    )
    assert first.status_code == 200 and "action=/authorize" in first.text
    assert approve(server.url, alice, first).status_code == 303
    again = alice.get(
        f"{server.url}/authorize", params=server.authorize_query(client, challenge, scope="rowscope:read")
    )
    assert again.status_code == 303
    assert "code" in query_of(again)
    wider = alice.get(f"{server.url}/authorize", params=server.authorize_query(client, challenge))
    assert wider.status_code == 200 and "action=/authorize" in wider.text


def test_denying_consent_redirects_with_access_denied_state_and_iss(
    server: Server, alice: httpx2.Client
) -> None:
    """Spec-required: RFC 6749 §4.1.2.1 access_denied, with state, and RFC 9207 §2 iss."""
    client = server.register(client_name="denied")
    _, challenge = pkce()
    page = alice.get(f"{server.url}/authorize", params=server.authorize_query(client, challenge))
    before = server.snapshot()
    response = approve(server.url, alice, page, action="deny")
    assert response.status_code == 303
    assert response.headers["location"].startswith(REDIRECT + "?")
    query = query_of(response)
    assert (query["error"], query["state"], query["iss"]) == ("access_denied", STATE, server.url)
    assert "code" not in query
    assert server.snapshot() == before


# -- tokens ---------------------------------------------------------------------------------------------


def test_the_token_response_is_a_bearer_token_for_an_hour_and_never_cached(
    server: Server, alice: httpx2.Client
) -> None:
    """Spec-required: RFC 6749 §5.1 (token_type, expires_in, Cache-Control: no-store, Pragma: no-cache)."""
    client = server.register()
    response = server.redeem(client, *server.code(alice, client))
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == BOTH
    assert body["access_token"].startswith("rsa_") and body["refresh_token"].startswith("rsr_")
    assert server.mcp(body["access_token"]).status_code == 200


def test_a_refresh_rotates_the_refresh_token_and_leaves_the_old_access_token_live(
    server: Server, alice: httpx2.Client
) -> None:
    """Spec-required: OAuth 2.1 §4.3.1 (rotation for public clients); keeping the old access token
    until it expires is our choice (RFC 6749 §6 allows it)."""
    client = server.register()
    first = server.tokens(alice, client)
    response = server.refresh(client, first["refresh_token"])
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    second = response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert second["scope"] == BOTH
    assert server.mcp(first["access_token"]).status_code == 200
    assert server.mcp(second["access_token"]).status_code == 200
    assert server.refresh(client, second["refresh_token"]).status_code == 200


def test_a_refresh_may_narrow_the_scope(server: Server, alice: httpx2.Client) -> None:
    """Spec-required: RFC 6749 §6 - a refresh may ask for a subset of the granted scope."""
    client = server.register()
    first = server.tokens(alice, client)
    narrowed = server.refresh(client, first["refresh_token"], scope="rowscope:read").json()
    assert narrowed["scope"] == "rowscope:read"


def test_revoking_the_current_refresh_token_revokes_its_whole_family(
    server: Server, alice: httpx2.Client
) -> None:
    """Spec-required: RFC 7009 §2.1 - revoking a refresh token SHOULD revoke its access tokens too."""
    client = server.register()
    first = server.tokens(alice, client)
    second = server.refresh(client, first["refresh_token"]).json()
    assert server.revoke(client, second["refresh_token"]).status_code == 200
    assert_bearer_refused(server.mcp(first["access_token"]))
    assert_bearer_refused(server.mcp(second["access_token"]))
    assert_oauth_error(server.refresh(client, second["refresh_token"]), 400, "invalid_grant")


@pytest.mark.parametrize(
    "method", [pytest.param("client_secret_basic", id="basic"), pytest.param("client_secret_post", id="post")]
)
def test_a_confidential_client_completes_the_whole_flow(
    server: Server, alice: httpx2.Client, method: str
) -> None:
    """Spec-required: RFC 6749 §2.3.1 (client_secret_basic and client_secret_post) and RFC 7591 §3.2.1."""
    client = server.register(token_endpoint_auth_method=method)
    assert client.secret and client.secret.startswith("rscs_")
    first = server.tokens(alice, client)
    assert server.mcp(first["access_token"]).status_code == 200
    second = server.refresh(client, first["refresh_token"])
    assert second.status_code == 200
    assert server.revoke(client, second.json()["access_token"]).status_code == 200
    assert_bearer_refused(server.mcp(second.json()["access_token"]))


# -- the registrations real clients send -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "redirect_uri"),
    [
        pytest.param("claudeai", "https://claude.ai/api/mcp/auth_callback", id="claude"),
        pytest.param(
            "ChatGPT", "https://chatgpt.com/connector_platform_oauth_redirect", id="chatgpt-platform"
        ),
        pytest.param("ChatGPT", "https://chatgpt.com/connector/oauth/abc123", id="chatgpt-connector"),
    ],
)
def test_claude_and_chatgpt_registrations_reach_the_consent_page(
    server: Server, alice: httpx2.Client, name: str, redirect_uri: str
) -> None:
    """Spec-required: MCP authorization (DCR, RFC 7591 §3.2.1) for the bodies Claude and ChatGPT send."""
    body = {
        "client_name": name,
        "scope": "claudeai",
        "redirect_uris": [redirect_uri],
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
    }
    response = server.http.post(f"{server.url}/register", json=body)
    assert response.status_code == 201
    assert response.headers["cache-control"] == "no-store"
    registered = response.json()
    assert registered["redirect_uris"] == [redirect_uri]
    assert registered["token_endpoint_auth_method"] == "none"
    assert "client_secret" not in registered
    client = Registered(registered["client_id"], "none", redirect_uri)
    page = alice.get(f"{server.url}/authorize", params=server.authorize_query(client, pkce()[1], scope=None))
    assert page.status_code == 200
    assert "action=/authorize" in page.text
    assert f"Allow {name}" in page.text
    assert "chatgpt.com" in page.text or "claude.ai" in page.text
    assert query_of(approve(server.url, alice, page))["state"] == STATE


# -- revocation by the user and by the operator ----------------------------------------------------------


def test_the_connections_page_lists_an_approved_client_and_revoking_it_ends_its_tokens(
    server: Server, carol: httpx2.Client
) -> None:
    """Our choice (MCP security best practices: per-user registry of approved clients, revocable)."""
    client = server.register(client_name="Connections page app")
    granted = server.tokens(carol, client)
    page = carol.get(f"{server.url}/connections")
    assert page.status_code == 200
    assert "Connections page app" in page.text
    forms = [hidden_fields(page.text, i) for i in range(page.text.count("<form"))]
    form = next(f for f in forms if f.get("client_id") == client.client_id)
    form.pop("__action__")
    assert carol.post(f"{server.url}/connections", data=form | {"action": "revoke"}).status_code == 303
    assert "Connections page app" not in carol.get(f"{server.url}/connections").text
    assert_bearer_refused(server.mcp(granted["access_token"]))
    assert_oauth_error(server.refresh(client, granted["refresh_token"]), 400, "invalid_grant")
    _, challenge = pkce()
    again = carol.get(f"{server.url}/authorize", params=server.authorize_query(client, challenge))
    assert again.status_code == 200 and "action=/authorize" in again.text


def test_the_cli_lists_clients_and_revoking_one_ends_its_tokens(
    server: Server, alice: httpx2.Client, database_url: str
) -> None:
    """Our choice: `rowscope clients list` / `clients revoke ID` for the operator."""
    client = server.register(client_name="CLI revoked app")
    granted = server.tokens(alice, client)
    listing = rowscope(database_url, "clients", "list").stdout
    line = next(row for row in listing.splitlines() if row.startswith(client.client_id))
    assert "CLI revoked app" in line and "live" in line
    rowscope(database_url, "clients", "revoke", client.client_id)
    assert_bearer_refused(server.mcp(granted["access_token"]))
    assert_oauth_error(server.refresh(client, granted["refresh_token"]), 401, "invalid_client")
    listing = rowscope(database_url, "clients", "list").stdout
    assert "revoked" in next(row for row in listing.splitlines() if row.startswith(client.client_id))


def test_the_cli_revokes_every_token_of_one_user_only(
    server: Server, alice: httpx2.Client, carol: httpx2.Client, database_url: str
) -> None:
    """Our choice: `rowscope tokens revoke --user EMAIL` ends that user's tokens and no one else's."""
    client = server.register(client_name="CLI user revocation")
    carols, alices = server.tokens(carol, client), server.tokens(alice, client)
    output = rowscope(database_url, "tokens", "revoke", "--user", "carol@example.com").stdout
    assert "carol@example.com" in output
    assert_bearer_refused(server.mcp(carols["access_token"]))
    assert server.mcp(alices["access_token"]).status_code == 200


def test_the_cli_prunes_a_stale_client_but_keeps_one_holding_a_live_token(
    server: Server, alice: httpx2.Client, database_url: str
) -> None:
    """Our choice: `rowscope clients prune` deletes registrations unused for stale_client_days."""
    stale, busy = server.register(client_name="stale app"), server.register(client_name="old but busy app")
    granted = server.tokens(alice, busy)
    server.sql(
        "UPDATE oauth_clients SET created_at = now() - interval '90 days', last_used_at = NULL"
        " WHERE client_id IN (:a, :b)",
        a=stale.client_id,
        b=busy.client_id,
    )
    rowscope(database_url, "clients", "prune")
    count = "SELECT count(*) FROM oauth_clients WHERE client_id = :c"
    assert server.scalar(count, c=stale.client_id) == 0
    assert server.scalar(count, c=busy.client_id) == 1
    assert server.mcp(granted["access_token"]).status_code == 200


def test_an_access_token_is_refused_once_its_client_is_revoked(server: Server, alice: httpx2.Client) -> None:
    """Our choice (RFC 7009 §2.1 spirit): a revoked client's tokens stop working even if their rows live."""
    client = server.register()
    granted = server.tokens(alice, client)
    assert server.mcp(granted["access_token"]).status_code == 200
    server.sql("UPDATE oauth_clients SET revoked_at = now() WHERE client_id = :c", c=client.client_id)
    assert_bearer_refused(server.mcp(granted["access_token"]))


# -- storage ------------------------------------------------------------------------------------------


def test_codes_tokens_secrets_and_sessions_are_stored_only_as_sha256_hashes(server: Server) -> None:
    """Spec-required: OAuth 2.1 §7.1 / RFC 6819 §5.1.4.1.3 (store credential hashes); the rest our choice."""
    browser = sign_in(server.url, "bob@example.com")
    try:
        session = browser.cookies["rowscope_session"]
        client = server.register(token_endpoint_auth_method="client_secret_basic")
        code, verifier = server.code(browser, client)
        granted = server.redeem(client, code, verifier).json()
    finally:
        browser.close()
    assert client.secret is not None
    raw = {
        "code": code,
        "access": granted["access_token"],
        "refresh": granted["refresh_token"],
        "secret": client.secret,
        "session": session,
    }
    dumps = []
    with server.engine.connect() as conn:
        for table in ("oauth_clients", "oauth_codes", "oauth_tokens", "oauth_consents", "auth_sessions"):
            rows = conn.execute(text(f"SELECT row_to_json(t)::text FROM {table} t")).scalars().all()
            dumps.extend(rows)
        stored = {
            "code": conn.execute(text("SELECT code_hash FROM oauth_codes")).scalars().all(),
            "access": conn.execute(text("SELECT access_hash FROM oauth_tokens")).scalars().all(),
            "refresh": conn.execute(text("SELECT refresh_hash FROM oauth_tokens")).scalars().all(),
            "secret": conn.execute(text("SELECT secret_hash FROM oauth_clients")).scalars().all(),
            "session": conn.execute(text("SELECT token_hash FROM auth_sessions")).scalars().all(),
        }
    everything = "\n".join(dumps)
    for kind, value in raw.items():
        assert value not in everything, kind
        assert value.split("_", 1)[1] not in everything, kind
        assert hashed(value) in stored[kind], kind
        assert all(HEX64.match(h) for h in stored[kind] if h is not None), kind
    assert json.loads(dumps[0])  # the dump really is the rows' JSON
