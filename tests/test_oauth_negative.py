"""The negative catalogue of rowscope's authorization server and bearer guard, over raw HTTP
against ``rowscope serve``: every attack or malformed request gets its RFC error code (never a
500), and the database shows that nothing was issued, spent or revoked that should not have been.

Row counts of every OAuth table are taken before and after each case (``Server.snapshot``);
where a failure is *meant* to change state (a replayed code, a reused refresh token) the test
states the change it expects.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable

import httpx2
import pytest

from rowscope.server.demo import DEMO_PASSWORD
from tests.oauth import hidden_fields, pkce
from tests.oauth_server import (
    ALICE_COACH,
    MCP_HEADERS,
    REDIRECT,
    STATE,
    Clients,
    Registered,
    Server,
    assert_bearer_refused,
    assert_error_page,
    assert_oauth_error,
    assert_redirect_error,
    hashed,
    query_of,
    sign_in,
)

pytestmark = pytest.mark.slow


# -- /authorize: stage 1, an error page and never a redirect ------------------------------------------


@pytest.mark.parametrize(
    "over",
    [
        pytest.param({"redirect_uri": REDIRECT + "/"}, id="redirect-uri-trailing-slash"),
        pytest.param({"redirect_uri": "http://127.0.0.1:33418/Callback"}, id="redirect-uri-case"),
        pytest.param({"redirect_uri": "HTTP://127.0.0.1:33418/callback"}, id="redirect-uri-scheme-case"),
        # Another port of a loopback redirect URI matches (RFC 8252 §7.3; test_oauth_hardening.py).
        pytest.param(
            {"redirect_uri": "http://localhost:33418/callback"}, id="redirect-uri-other-loopback-host"
        ),
        pytest.param({"redirect_uri": REDIRECT + "#frag"}, id="redirect-uri-fragment"),
        pytest.param({"redirect_uri": REDIRECT + "?extra=1"}, id="redirect-uri-extra-query"),
        pytest.param({"redirect_uri": "https://evil.example/callback"}, id="redirect-uri-unregistered"),
        pytest.param({"client_id": str(uuid.uuid4())}, id="client-id-unknown"),
        pytest.param({"client_id": ""}, id="client-id-empty"),
        pytest.param(
            {"client_id": "http://client.example/oauth/metadata.json"}, id="client-id-document-over-http"
        ),
        pytest.param(
            {"client_id": "https://127.0.0.1:1/client.json"}, id="client-id-document-on-loopback-ip"
        ),
    ],
)
def test_an_untrustworthy_client_or_redirect_uri_gets_an_error_page_not_a_redirect(
    server: Server, clients: Clients, alice: httpx2.Client, over: dict[str, str]
) -> None:
    """Spec-required: RFC 6749 §4.1.2.1 and OAuth 2.1 §2.3.1 (exact match) - MUST NOT redirect."""
    before = server.snapshot()
    _, challenge = pkce()
    response = alice.get(
        f"{server.url}/authorize", params=server.authorize_query(clients.public, challenge, **over)
    )
    assert_error_page(response)
    assert server.snapshot() == before


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("client_id", id="repeated-client-id"),
        pytest.param("redirect_uri", id="repeated-redirect-uri"),
    ],
)
def test_a_repeated_client_id_or_redirect_uri_gets_an_error_page(
    server: Server, clients: Clients, alice: httpx2.Client, key: str
) -> None:
    """Spec-required: RFC 6749 §3.1 (no repeats) with §4.1.2.1 - the redirect target is not trusted."""
    before = server.snapshot()
    _, challenge = pkce()
    query = server.authorize_query(clients.public, challenge)
    query.append((key, dict(query)[key]))
    assert_error_page(alice.get(f"{server.url}/authorize", params=query))
    assert server.snapshot() == before


def test_a_client_document_on_a_private_host_is_refused_without_being_fetched(
    server: Server, alice: httpx2.Client
) -> None:
    """Spec-required: CIMD draft §6.5 and MCP security best practices (SSRF) - no connection is made."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        document = f"https://localhost:{port}/oauth/client.json"
        before = server.snapshot()
        _, challenge = pkce()
        query = server.authorize_query(
            Registered(document, "none", "https://app.example/callback"), challenge
        )
        assert_error_page(alice.get(f"{server.url}/authorize", params=query))
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert server.snapshot() == before


# -- /authorize: stage 2, an error redirect with state and iss --------------------------------------


@pytest.mark.parametrize(
    ("over", "error"),
    [
        pytest.param({"code_challenge_method": "plain"}, "invalid_request", id="pkce-plain"),
        pytest.param({"code_challenge_method": None}, "invalid_request", id="pkce-method-missing"),
        pytest.param({"code_challenge": None}, "invalid_request", id="pkce-challenge-missing"),
        pytest.param({"code_challenge": "short"}, "invalid_request", id="pkce-challenge-malformed"),
        pytest.param({"resource": "https://other.example/mcp"}, "invalid_target", id="resource-other-server"),
        pytest.param({"resource": None}, "invalid_target", id="resource-missing"),
        pytest.param({"resource": "{url}/mcp/"}, "invalid_target", id="resource-trailing-slash"),
        pytest.param({"resource": "{url}"}, "invalid_target", id="resource-the-issuer-not-mcp"),
        pytest.param({"response_type": "token"}, "unsupported_response_type", id="response-type-token"),
        pytest.param({"response_type": None}, "unsupported_response_type", id="response-type-missing"),
        pytest.param({"scope": "rowscope:admin"}, "invalid_scope", id="scope-unknown"),
        pytest.param({"state": "s" * 3000}, "invalid_request", id="state-too-long"),
    ],
)
def test_a_bad_authorization_request_redirects_with_its_error_state_and_iss(
    server: Server, clients: Clients, alice: httpx2.Client, over: dict[str, str | None], error: str
) -> None:
    """Spec-required: RFC 6749 §4.1.2.1, OAuth 2.1 §4.1.1 (S256), RFC 8707 §2, RFC 9207 §2."""
    over = {k: v.format(url=server.url) if v else v for k, v in over.items()}
    before = server.snapshot()
    _, challenge = pkce()
    response = alice.get(
        f"{server.url}/authorize", params=server.authorize_query(clients.public, challenge, **over)
    )
    assert_redirect_error(server, response, REDIRECT, error)
    if "state" not in over:
        assert query_of(response)["state"] == STATE
    assert server.snapshot() == before


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("scope", id="repeated-scope"),
        pytest.param("state", id="repeated-state"),
        pytest.param("code_challenge", id="repeated-code-challenge"),
        pytest.param("resource", id="repeated-resource"),
    ],
)
def test_a_repeated_authorization_parameter_redirects_with_invalid_request(
    server: Server, clients: Clients, alice: httpx2.Client, key: str
) -> None:
    """Spec-required: RFC 6749 §3.1 and §4.1.2.1 - a parameter sent twice is invalid_request."""
    before = server.snapshot()
    _, challenge = pkce()
    query = server.authorize_query(clients.public, challenge)
    query.append((key, dict(query)[key]))
    assert_redirect_error(
        server, alice.get(f"{server.url}/authorize", params=query), REDIRECT, "invalid_request"
    )
    assert server.snapshot() == before


# -- /token: client authentication and malformed requests -------------------------------------------

TokenCase = Callable[[Clients, str, str], tuple[tuple[str, str] | None, dict[str, str]]]


def _grant(code: str, verifier: str) -> dict[str, str]:
    return {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": REDIRECT,
    }


@pytest.mark.parametrize(
    ("owner", "build", "status", "error"),
    [
        pytest.param(
            "public",
            lambda c, code, v: (None, _grant(code, v) | {"client_id": str(uuid.uuid4())}),
            401,
            "invalid_client",
            id="unknown-client",
        ),
        pytest.param(
            "public", lambda c, code, v: (None, _grant(code, v)), 401, "invalid_client", id="no-client-at-all"
        ),
        pytest.param(
            "basic",
            lambda c, code, v: ((c.basic.client_id, "rscs_wrong"), _grant(code, v)),
            401,
            "invalid_client",
            id="confidential-wrong-secret",
        ),
        pytest.param(
            "basic",
            lambda c, code, v: (None, _grant(code, v) | {"client_id": c.basic.client_id}),
            401,
            "invalid_client",
            id="confidential-without-secret",
        ),
        pytest.param(
            "public",
            lambda c, code, v: (
                None,
                _grant(code, v) | {"client_id": c.public.client_id, "client_secret": "x"},
            ),
            401,
            "invalid_client",
            id="public-client-sends-secret-post",
        ),
        pytest.param(
            "public",
            lambda c, code, v: ((c.public.client_id, "x"), _grant(code, v)),
            401,
            "invalid_client",
            id="public-client-sends-basic",
        ),
        pytest.param(
            "basic",
            lambda c, code, v: (
                None,
                _grant(code, v) | {"client_id": c.basic.client_id, "client_secret": c.basic.secret or ""},
            ),
            401,
            "invalid_client",
            id="basic-client-authenticates-by-post",
        ),
        pytest.param(
            "post",
            lambda c, code, v: ((c.post.client_id, c.post.secret or ""), _grant(code, v)),
            401,
            "invalid_client",
            id="post-client-authenticates-by-basic",
        ),
        pytest.param(
            "basic",
            lambda c, code, v: (
                (c.basic.client_id, c.basic.secret or ""),
                _grant(code, v) | {"client_id": c.post.client_id},
            ),
            401,
            "invalid_client",
            id="basic-and-form-client-id-differ",
        ),
        pytest.param(
            "public",
            lambda c, code, v: (
                None,
                _grant(code, v) | {"client_id": c.public.client_id, "grant_type": "password"},
            ),
            400,
            "unsupported_grant_type",
            id="grant-type-password",
        ),
        pytest.param(
            "public",
            lambda c, code, v: (
                None,
                {k: x for k, x in _grant(code, v).items() if k != "grant_type"}
                | {"client_id": c.public.client_id},
            ),
            400,
            "unsupported_grant_type",
            id="grant-type-missing",
        ),
        pytest.param(
            "public",
            lambda c, code, v: (
                None,
                _grant(code, v) | {"client_id": c.public.client_id, "grant_type": "client_credentials"},
            ),
            400,
            "unsupported_grant_type",
            id="grant-type-client-credentials",
        ),
        pytest.param(
            "public",
            lambda c, code, v: (
                None,
                _grant(code, v) | {"client_id": c.public.client_id, "code": "rsc_unknown"},
            ),
            400,
            "invalid_grant",
            id="code-unknown",
        ),
        pytest.param(
            "public",
            lambda c, code, v: (
                None,
                _grant(code, v) | {"client_id": c.public.client_id, "code_verifier": "a b"},
            ),
            400,
            "invalid_grant",
            id="code-verifier-malformed",
        ),
    ],
)
def test_a_token_request_refused_before_the_code_is_looked_at_leaves_the_code_redeemable(
    server: Server,
    clients: Clients,
    alice: httpx2.Client,
    owner: str,
    build: TokenCase,
    status: int,
    error: str,
) -> None:
    """Spec-required: RFC 6749 §5.2 (invalid_client is 401, §2.3.1 one method) and OAuth 2.1 §3.2.3."""
    client: Registered = getattr(clients, owner)
    code, verifier = server.code(alice, client)
    auth, form = build(clients, code, verifier)
    before = server.snapshot()
    assert_oauth_error(server.http.post(f"{server.url}/token", data=form, auth=auth), status, error)
    assert server.snapshot() == before
    assert server.redeem(client, code, verifier).status_code == 200


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        pytest.param(
            "grant_type=authorization_code&grant_type=refresh_token&client_id={id}",
            {"Content-Type": "application/x-www-form-urlencoded"},
            id="repeated-grant-type",
        ),
        pytest.param(
            "grant_type=refresh_token&refresh_token=a&refresh_token=b&client_id={id}",
            {"Content-Type": "application/x-www-form-urlencoded"},
            id="repeated-refresh-token",
        ),
        pytest.param(
            '{{"grant_type": "refresh_token", "refresh_token": "x", "client_id": "{id}"}}',
            {"Content-Type": "application/json"},
            id="json-body",
        ),
        # An oversized body is 413 invalid_request, before it is parsed: test_oauth_hardening.py.
    ],
)
def test_a_malformed_token_request_is_invalid_request(
    server: Server, clients: Clients, content: str, headers: dict[str, str]
) -> None:
    """Spec-required: RFC 6749 §3.2 (form encoding, no repeated parameters) and §5.2 invalid_request."""
    before = server.snapshot()
    response = server.http.post(
        f"{server.url}/token", content=content.format(id=clients.public.client_id), headers=headers
    )
    assert_oauth_error(response, 400, "invalid_request")
    assert server.snapshot() == before


@pytest.mark.parametrize(
    "path", [pytest.param("/token", id="get-token"), pytest.param("/revoke", id="get-revoke")]
)
def test_the_token_and_revocation_endpoints_refuse_get(server: Server, path: str) -> None:
    """Spec-required: RFC 6749 §3.2 and RFC 7009 §2.1 - these endpoints take POST only."""
    assert server.http.get(f"{server.url}{path}").status_code == 405


# -- /token: the authorization-code grant -------------------------------------------------------------


def test_a_reused_code_is_refused_and_revokes_the_tokens_of_its_first_redemption(
    server: Server, clients: Clients, alice: httpx2.Client
) -> None:
    """Spec-required: OAuth 2.1 §4.1.3 and RFC 6749 §4.1.2 - SHOULD revoke tokens issued from the code."""
    code, verifier = server.code(alice, clients.public)
    first = server.redeem(clients.public, code, verifier).json()
    assert server.mcp(first["access_token"]).status_code == 200
    before = server.snapshot()
    assert_oauth_error(server.redeem(clients.public, code, verifier), 400, "invalid_grant")
    after = server.snapshot()
    assert after == before | {"live_tokens": before["live_tokens"] - 1}
    assert_bearer_refused(server.mcp(first["access_token"]))
    assert_oauth_error(server.refresh(clients.public, first["refresh_token"]), 400, "invalid_grant")


def test_a_wrong_code_verifier_is_invalid_grant_and_spends_the_code(
    server: Server, clients: Clients, alice: httpx2.Client
) -> None:
    """Spec-required: RFC 7636 §4.6 invalid_grant; spending the code is our choice (no retries)."""
    code, verifier = server.code(alice, clients.public)
    before = server.snapshot()
    assert_oauth_error(server.redeem(clients.public, code, pkce()[0]), 400, "invalid_grant")
    assert server.snapshot() == before | {"used_codes": before["used_codes"] + 1}
    assert_oauth_error(server.redeem(clients.public, code, verifier), 400, "invalid_grant")
    assert server.snapshot()["tokens"] == before["tokens"]


def test_a_missing_code_verifier_is_invalid_request_and_leaves_the_code_unspent(
    server: Server, clients: Clients, alice: httpx2.Client
) -> None:
    """Spec-required: OAuth 2.1 §4.1.3 (verifier required); checked before the code is consumed."""
    code, verifier = server.code(alice, clients.public)
    before = server.snapshot()
    response = server.token(
        clients.public, {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    )
    assert_oauth_error(response, 400, "invalid_request")
    assert server.snapshot() == before
    assert server.redeem(clients.public, code, verifier).status_code == 200


@pytest.mark.parametrize(
    ("redeemer", "extra", "error"),
    [
        pytest.param("other", {}, "invalid_grant", id="code-of-another-client"),
        pytest.param("public", {"redirect_uri": REDIRECT + "/"}, "invalid_grant", id="redirect-uri-differs"),
        pytest.param(
            "public", {"resource": "https://other.example/mcp"}, "invalid_target", id="resource-differs"
        ),
    ],
)
def test_a_code_presented_with_mismatching_parameters_is_refused_and_spent(
    server: Server, clients: Clients, alice: httpx2.Client, redeemer: str, extra: dict[str, str], error: str
) -> None:
    """Spec-required: RFC 6749 §4.1.3 (client, redirect_uri) and RFC 8707 §2.2 (resource)."""
    code, verifier = server.code(alice, clients.public)
    before = server.snapshot()
    assert_oauth_error(server.redeem(getattr(clients, redeemer), code, verifier, **extra), 400, error)
    assert server.snapshot() == before | {"used_codes": before["used_codes"] + 1}
    assert_oauth_error(server.redeem(clients.public, code, verifier), 400, "invalid_grant")


def test_an_expired_code_is_invalid_grant(server: Server, clients: Clients, alice: httpx2.Client) -> None:
    """Spec-required: OAuth 2.1 §4.1.2 - codes are short-lived; an expired one is invalid_grant."""
    code, verifier = server.code(alice, clients.public)
    server.sql(
        "UPDATE oauth_codes SET expires_at = now() - interval '1 second' WHERE code_hash = :h", h=hashed(code)
    )
    before = server.snapshot()
    assert_oauth_error(server.redeem(clients.public, code, verifier), 400, "invalid_grant")
    assert server.snapshot() == before


# -- /token: the refresh-token grant ----------------------------------------------------------------


def test_a_refresh_token_used_twice_revokes_its_whole_family(
    server: Server, clients: Clients, alice: httpx2.Client
) -> None:
    """Spec-required: OAuth 2.1 §4.3.1 and RFC 9700 §4.14.2 - reuse of a rotated token revokes the family."""
    first = server.tokens(alice, clients.public)
    second = server.refresh(clients.public, first["refresh_token"]).json()
    assert server.mcp(second["access_token"]).status_code == 200
    assert_oauth_error(server.refresh(clients.public, first["refresh_token"]), 400, "invalid_grant")
    assert_bearer_refused(server.mcp(second["access_token"]))
    assert_bearer_refused(server.mcp(first["access_token"]))
    assert_oauth_error(server.refresh(clients.public, second["refresh_token"]), 400, "invalid_grant")


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        pytest.param({"scope": "rowscope:read rowscope:write"}, "invalid_scope", id="scope-escalation"),
        pytest.param({"scope": "rowscope:admin"}, "invalid_scope", id="scope-unknown"),
        pytest.param({"resource": "https://other.example/mcp"}, "invalid_target", id="resource-other-server"),
    ],
)
def test_a_refused_refresh_leaves_the_refresh_token_usable(
    server: Server, clients: Clients, alice: httpx2.Client, extra: dict[str, str], error: str
) -> None:
    """Spec-required: RFC 6749 §6 (no wider scope) and RFC 8707 §2.2; not spending it is our choice."""
    granted = server.tokens(alice, clients.public, scope="rowscope:read")
    before = server.snapshot()
    assert_oauth_error(server.refresh(clients.public, granted["refresh_token"], **extra), 400, error)
    assert server.snapshot() == before
    assert server.refresh(clients.public, granted["refresh_token"]).status_code == 200


@pytest.mark.parametrize(
    ("presenter", "kind"),
    [
        pytest.param("other", "refresh_token", id="another-clients-refresh-token"),
        pytest.param("public", "access_token", id="access-token-as-refresh-token"),
    ],
)
def test_a_refresh_with_a_token_that_is_not_the_clients_refresh_token_is_invalid_grant(
    server: Server, clients: Clients, alice: httpx2.Client, presenter: str, kind: str
) -> None:
    """Spec-required: RFC 6749 §6 - the refresh token must have been issued to the client."""
    granted = server.tokens(alice, clients.public)
    before = server.snapshot()
    assert_oauth_error(server.refresh(getattr(clients, presenter), granted[kind]), 400, "invalid_grant")
    assert server.snapshot() == before
    assert server.refresh(clients.public, granted["refresh_token"]).status_code == 200


def test_a_client_that_did_not_register_the_refresh_grant_cannot_refresh(
    server: Server, alice: httpx2.Client
) -> None:
    """Spec-required: RFC 6749 §5.2 unauthorized_client for a grant type the client may not use."""
    client = server.register(grant_types=["authorization_code"])
    granted = server.tokens(alice, client)
    before = server.snapshot()
    assert_oauth_error(server.refresh(client, granted["refresh_token"]), 400, "unauthorized_client")
    assert server.snapshot() == before


# -- /revoke ------------------------------------------------------------------------------------------


def test_revocation_without_client_authentication_is_invalid_client(
    server: Server, clients: Clients, alice: httpx2.Client
) -> None:
    """Spec-required: RFC 7009 §2.1 - the client authenticates; failure is RFC 6749 §5.2 invalid_client."""
    granted = server.tokens(alice, clients.public)
    before = server.snapshot()
    response = server.http.post(f"{server.url}/revoke", data={"token": granted["access_token"]})
    assert_oauth_error(response, 401, "invalid_client")
    assert server.snapshot() == before
    assert server.mcp(granted["access_token"]).status_code == 200


@pytest.mark.parametrize(
    "token",
    [pytest.param("rsa_unknown", id="unknown-token"), pytest.param("other-client", id="other-clients-token")],
)
def test_revoking_a_token_the_client_does_not_hold_answers_200_and_changes_nothing(
    server: Server, clients: Clients, alice: httpx2.Client, token: str
) -> None:
    """Spec-required: RFC 7009 §2.2 - an invalid token still gets 200; another client's token stays live."""
    granted = server.tokens(alice, clients.other)
    if token == "other-client":
        token = granted["access_token"]
    before = server.snapshot()
    assert server.revoke(clients.public, token).status_code == 200
    assert server.snapshot() == before
    assert server.mcp(granted["access_token"]).status_code == 200


# -- the bearer guard in front of /mcp -------------------------------------------------------------


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(
            "UPDATE oauth_tokens SET resource = 'https://other.example/mcp' WHERE access_hash = :h",
            id="other-audience",
        ),
        pytest.param(
            "UPDATE oauth_tokens SET resource = resource || '/' WHERE access_hash = :h",
            id="audience-with-slash",
        ),
        pytest.param(
            "UPDATE oauth_tokens SET access_expires_at = now() - interval '1 second' WHERE access_hash = :h",
            id="expired-access-token",
        ),
        pytest.param("UPDATE oauth_tokens SET revoked_at = now() WHERE access_hash = :h", id="revoked-row"),
    ],
)
def test_an_access_token_that_is_not_live_for_this_server_gets_401_invalid_token(
    server: Server, clients: Clients, alice: httpx2.Client, spoil: str
) -> None:
    """Spec-required: MCP authorization (Token Handling: audience, RFC 8707) and RFC 6750 §3.1."""
    granted = server.tokens(alice, clients.public)
    server.sql(spoil, h=hashed(granted["access_token"]))
    assert_bearer_refused(server.mcp(granted["access_token"]))


@pytest.mark.parametrize(
    "which",
    [
        pytest.param("access_token", id="revoke-access-token"),
        pytest.param("refresh_token", id="revoke-refresh-family"),
    ],
)
def test_an_access_token_revoked_through_rfc_7009_gets_401(
    server: Server, clients: Clients, alice: httpx2.Client, which: str
) -> None:
    """Spec-required: RFC 7009 §2 - revoking the access token, or its refresh token's family, ends it."""
    granted = server.tokens(alice, clients.public)
    assert server.revoke(clients.public, granted[which]).status_code == 200
    assert_bearer_refused(server.mcp(granted["access_token"]))


@pytest.mark.parametrize(
    ("path", "header_token"),
    [
        pytest.param("/mcp?access_token={token}", False, id="token-in-query-string"),
        pytest.param("/mcp", "{refresh}", id="refresh-token-as-bearer"),
        pytest.param("/mcp", "{code}", id="code-as-bearer"),
        pytest.param("/mcp", "rsa_" + "x" * 43, id="unknown-access-token"),
    ],
)
def test_anything_but_a_live_access_token_in_the_header_gets_401(
    server: Server, clients: Clients, alice: httpx2.Client, path: str, header_token: str | bool
) -> None:
    """Spec-required: MCP authorization (tokens only in the Authorization header) and RFC 6750 §2.3/§3.1."""
    code, verifier = server.code(alice, clients.public)
    granted = server.redeem(clients.public, code, verifier).json()
    values = {"token": granted["access_token"], "refresh": granted["refresh_token"], "code": code}
    token = header_token.format(**values) if isinstance(header_token, str) else None
    response = server.mcp(token, path=path.format(**values))
    assert_bearer_refused(response, "invalid_token" if token else None)


def test_a_write_tool_called_with_a_read_only_token_gets_403_and_does_not_run(
    server: Server, clients: Clients, alice: httpx2.Client
) -> None:
    """Spec-required: MCP authorization (Scope Challenge Handling) and RFC 6750 §3.1 insufficient_scope."""
    granted = server.tokens(alice, clients.public, scope="rowscope:read")
    assert granted["scope"] == "rowscope:read"
    count = "SELECT count(*) FROM spark_embeddings WHERE spark_id = :s"
    chunks = server.scalar(count, s=ALICE_COACH)
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {
            "name": "add_training_content",
            "arguments": {"spark_id": ALICE_COACH, "content": f"read-only write attempt {uuid.uuid4()}"},
        },
    }
    response = server.mcp(granted["access_token"], body=call)
    assert response.status_code == 403
    challenge = response.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="rowscope:read rowscope:write"' in challenge
    assert server.scalar(count, s=ALICE_COACH) == chunks
    assert server.mcp(granted["access_token"]).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 100_000, id="nested-past-the-parser-s-depth"),
        pytest.param(b'{"jsonrpc": "2.0", "id": ' + b"9" * 5000 + b"}", id="integer-past-the-digit-limit"),
        pytest.param(b'{"jsonrpc": "2.0", "id": "\xff\xfe"}', id="not-utf-8"),
    ],
)
def test_a_body_json_cannot_read_is_the_transport_s_parse_error_for_a_read_only_token_too(
    server: Server, clients: Clients, alice: httpx2.Client, body: bytes
) -> None:
    """Our choice: with a read-only token the guard reads the body to look for a write tool; a body it
    cannot parse is left to the MCP transport, which answers it as bad JSON (400), never a 500."""
    granted = server.tokens(alice, clients.public, scope="rowscope:read")
    headers = MCP_HEADERS | {
        "Authorization": f"Bearer {granted['access_token']}",
        "Content-Type": "application/json",
    }
    response = server.http.post(f"{server.url}/mcp", content=body, headers=headers)
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["code"] == -32700


# -- consent and sign-in forms ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "csrf",
    [
        pytest.param(None, id="consent-csrf-missing"),
        pytest.param("0" * 64, id="consent-csrf-forged"),
        pytest.param("other-client", id="consent-csrf-of-another-client"),
        pytest.param("other-session", id="consent-csrf-of-another-session"),
    ],
)
def test_a_consent_decision_without_its_csrf_token_is_403_and_grants_nothing(
    server: Server, clients: Clients, alice: httpx2.Client, csrf: str | None
) -> None:
    """Spec-required: MCP security best practices (confused deputy: consent CSRF), RFC 6749 §10.12."""
    fresh = server.register(client_name="consent csrf target")
    _, challenge = pkce()
    page = alice.get(f"{server.url}/authorize", params=server.authorize_query(fresh, challenge))
    assert page.status_code == 200 and "action=/authorize" in page.text
    form = hidden_fields(page.text)
    form.pop("__action__")
    if csrf is None:
        form.pop("csrf_token")
    elif csrf == "other-client":
        other = server.register(client_name="consent csrf decoy")
        decoy = alice.get(f"{server.url}/authorize", params=server.authorize_query(other, challenge))
        form["csrf_token"] = hidden_fields(decoy.text)["csrf_token"]
    elif csrf == "other-session":
        bob = sign_in(server.url, "bob@example.com")
        try:
            bobs = bob.get(f"{server.url}/authorize", params=server.authorize_query(fresh, challenge))
            form["csrf_token"] = hidden_fields(bobs.text)["csrf_token"]
        finally:
            bob.close()
    else:
        form["csrf_token"] = csrf
    before = server.snapshot()
    response = alice.post(f"{server.url}/authorize", data=form | {"action": "approve"})
    assert_error_page(response, 403)
    assert server.snapshot() == before


def test_a_consent_post_without_a_session_is_403(
    server: Server, clients: Clients, alice: httpx2.Client
) -> None:
    """Spec-required: MCP security best practices (consent bound to the signed-in user)."""
    fresh = server.register(client_name="consent without session")
    _, challenge = pkce()
    form = hidden_fields(
        alice.get(f"{server.url}/authorize", params=server.authorize_query(fresh, challenge)).text
    )
    form.pop("__action__")
    before = server.snapshot()
    response = server.http.post(f"{server.url}/authorize", data=form | {"action": "approve"})
    assert_error_page(response, 403)
    assert server.snapshot() == before


@pytest.mark.parametrize(
    "csrf",
    [
        pytest.param(None, id="signin-csrf-missing"),
        pytest.param("0" * 64, id="signin-csrf-forged"),
        pytest.param("no-cookie", id="signin-csrf-without-its-cookie"),
    ],
)
def test_a_sign_in_without_its_csrf_token_is_403_and_starts_no_session(
    server: Server, csrf: str | None
) -> None:
    """Spec-required: MCP security best practices (CSRF protection); login CSRF is RFC 6749 §10.12."""
    with httpx2.Client(timeout=15) as http:
        form = hidden_fields(http.get(f"{server.url}/signin").text)
        form.pop("__action__")
        if csrf is None:
            form.pop("csrf_token")
        elif csrf == "no-cookie":
            http.cookies.clear()
        else:
            form["csrf_token"] = csrf
        before = server.snapshot()
        response = http.post(
            f"{server.url}/signin", data=form | {"email": "alice@example.com", "password": DEMO_PASSWORD}
        )
        assert_error_page(response, 403)
        assert "rowscope_session" not in response.headers.get("set-cookie", "")
    assert server.snapshot() == before


def test_a_wrong_password_gets_401_and_no_session_cookie(server: Server) -> None:
    """Our choice: a failed sign-in answers 401 with the form again and creates no session."""
    with httpx2.Client(timeout=15) as http:
        form = hidden_fields(http.get(f"{server.url}/signin").text)
        form.pop("__action__")
        before = server.snapshot()
        response = http.post(
            f"{server.url}/signin", data=form | {"email": "alice@example.com", "password": "wrong"}
        )
        assert response.status_code == 401
        assert "rowscope_session" not in response.headers.get("set-cookie", "")
        assert "rowscope_session" not in http.cookies
    assert server.snapshot() == before


@pytest.mark.parametrize(
    "return_to",
    [
        pytest.param("https://evil.example/", id="absolute-url"),
        pytest.param("//evil.example/", id="scheme-relative"),
        pytest.param("/\\evil.example/", id="backslash"),
        pytest.param("/authorize\\@evil.example", id="authorize-backslash"),
        pytest.param("javascript:alert(1)", id="javascript"),
    ],
)
def test_sign_in_never_redirects_off_site(server: Server, return_to: str) -> None:
    """Spec-required: RFC 6749 §10.15 (open redirectors) - sign-in lands on /connections instead."""
    with httpx2.Client(timeout=15) as http:
        page = http.get(f"{server.url}/signin", params={"return_to": return_to})
        form = hidden_fields(page.text)
        form.pop("__action__")
        assert form["return_to"] == "/connections"
        response = http.post(
            f"{server.url}/signin",
            data=form | {"return_to": return_to, "email": "carol@example.com", "password": DEMO_PASSWORD},
        )
    assert response.status_code == 303
    assert response.headers["location"] == "/connections"


@pytest.mark.parametrize(
    "page", [pytest.param("signin", id="signin-page"), pytest.param("consent", id="consent-page")]
)
def test_the_sign_in_and_consent_pages_refuse_to_be_framed(
    server: Server, clients: Clients, alice: httpx2.Client, page: str
) -> None:
    """Spec-required: MCP security best practices (clickjacking: frame-ancestors, X-Frame-Options DENY)."""
    if page == "signin":
        response = server.http.get(f"{server.url}/signin")
    else:
        fresh = server.register(client_name="framing check")
        response = alice.get(f"{server.url}/authorize", params=server.authorize_query(fresh, pkce()[1]))
        assert "action=/authorize" in response.text
    assert response.status_code == 200
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


# -- /register ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "error"),
    [
        pytest.param(b'{"redirect_uris": [', "invalid_client_metadata", id="malformed-json"),
        pytest.param(b"\xff\xfe", "invalid_client_metadata", id="not-utf8"),
        pytest.param(b'["https://app.example/cb"]', "invalid_client_metadata", id="json-array"),
        pytest.param(b'"just a string"', "invalid_client_metadata", id="json-string"),
        pytest.param(b"{}", "invalid_redirect_uri", id="no-redirect-uris"),
        pytest.param(
            b'{"redirect_uris": "https://app.example/cb"}',
            "invalid_client_metadata",
            id="redirect-uris-not-a-list",
        ),
        pytest.param(
            b'{"redirect_uris": ["http://app.example/cb"]}', "invalid_redirect_uri", id="http-non-loopback"
        ),
        pytest.param(
            b'{"redirect_uris": ["https://app.example/cb#frag"]}', "invalid_redirect_uri", id="fragment"
        ),
        pytest.param(
            b'{"redirect_uris": ["https://user@app.example/cb"]}', "invalid_redirect_uri", id="userinfo"
        ),
        pytest.param(b'{"redirect_uris": ["app.example/cb"]}', "invalid_redirect_uri", id="relative"),
        pytest.param(
            b'{"redirect_uris": ["javascript:alert(1)"]}', "invalid_redirect_uri", id="javascript-scheme"
        ),
        pytest.param(
            b'{"redirect_uris": ["https://app.example/cb"], "grant_types": ["implicit"]}',
            "invalid_client_metadata",
            id="grant-implicit",
        ),
        pytest.param(
            b'{"redirect_uris": ["https://app.example/cb"], '
            b'"grant_types": ["authorization_code", "client_credentials"]}',
            "invalid_client_metadata",
            id="grant-client-credentials",
        ),
        pytest.param(
            b'{"redirect_uris": ["https://app.example/cb"], "response_types": ["token"]}',
            "invalid_client_metadata",
            id="response-type-token",
        ),
        pytest.param(
            b'{"redirect_uris": ["https://app.example/cb"], "token_endpoint_auth_method": "private_key_jwt"}',
            "invalid_client_metadata",
            id="auth-method-unsupported",
        ),
        pytest.param(
            b'{"redirect_uris": ["https://app.example/cb"], "client_name": 7}',
            "invalid_client_metadata",
            id="client-name-not-a-string",
        ),
        # An oversized body is 413 before it is parsed: test_oauth_hardening.py.
    ],
)
def test_a_bad_registration_is_refused_with_its_rfc_7591_error(
    server: Server, content: bytes, error: str
) -> None:
    """Spec-required: RFC 7591 §3.2.2 (invalid_redirect_uri, invalid_client_metadata); OAuth 2.1 §2.3.1."""
    before = server.snapshot()
    response = server.http.post(
        f"{server.url}/register", content=content, headers={"Content-Type": "application/json"}
    )
    assert_oauth_error(response, 400, error)
    assert server.snapshot() == before
