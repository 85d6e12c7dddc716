"""Hardening of rowscope's authorization server, against a real ``rowscope serve``: bodies read only
up to each endpoint's limit (chunked or with a Content-Length that says too much), dynamic
registration limited per address and by a quota of unused clients, the URIs a client registers
restricted to https (http on loopback), loopback redirect URIs matched on any port, and the consent
page saying when an application's name is its own unverified claim."""

from __future__ import annotations

import json
import select
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx2
import pytest
from sqlalchemy import Engine

from rowscope.auth import pages
from tests.oauth import pkce
from tests.oauth_server import REDIRECT, Server, approve, assert_error_page, query_of, sign_in
from tests.servers import serve

pytestmark = pytest.mark.slow

PER_ADDRESS = 3


@pytest.fixture(scope="module")
def server(database_url: str, admin: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(database_url, tmp_path_factory.mktemp("hardening")) as url:
        running = Server(url, admin)
        try:
            yield running
        finally:
            running.http.close()


@pytest.fixture(scope="module")
def alice(server: Server) -> Iterator[httpx2.Client]:
    browser = sign_in(server.url)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(autouse=True)
def no_registrations_counted(admin: Engine) -> Iterator[None]:
    """The registrations this module counts per address are not left to other modules' servers."""
    yield
    with admin.begin() as conn:
        conn.exec_driver_sql("DELETE FROM signin_failures WHERE kind = 'register'")


# -- bodies: read only up to the limit ----------------------------------------------------------------


def raw_exchange(url: str, head: bytes, chunks: Iterator[bytes]) -> tuple[int, dict[str, str], bytes, int]:
    """Send ``head``, then ``chunks`` until the server answers; (status, headers, body, body bytes
    sent). Reads the answer until the server closes the connection or 10 s pass."""
    port = urlsplit(url).port
    assert port is not None
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # the answer is there: stop sending, as a client would
            try:
                sock.sendall(chunk)
            except OSError:  # the server closed the connection
                break
            sent += len(chunk)
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except (ConnectionResetError, TimeoutError):
            pass
    status_line, _, rest = answer.partition(b"\r\n")
    raw_headers, _, body = rest.partition(b"\r\n\r\n")
    headers = dict(line.decode().lower().split(": ", 1) for line in raw_headers.split(b"\r\n") if line)
    return int(status_line.split()[1]), headers, body, sent


def chunked(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """``total`` bytes of a chunked body in ``size`` pieces, then its last chunk."""
    piece = f"{size:x}\r\n".encode() + b"a" * size + b"\r\n"
    for _ in range(total // size):
        yield piece
    yield b"0\r\n\r\n"


ENDPOINTS = [
    pytest.param("/register", "application/json", 64 * 1024, id="register"),
    pytest.param("/token", "application/x-www-form-urlencoded", 16 * 1024, id="token"),
    pytest.param("/revoke", "application/x-www-form-urlencoded", 16 * 1024, id="revoke"),
    pytest.param("/signin", "application/x-www-form-urlencoded", 16 * 1024, id="signin-form"),
    pytest.param("/authorize", "application/x-www-form-urlencoded", 16 * 1024, id="consent-form"),
]


@pytest.mark.parametrize(("path", "content_type", "limit"), ENDPOINTS)
def test_a_chunked_body_past_the_limit_is_refused_413_without_reading_the_rest(
    server: Server, path: str, content_type: str, limit: int
) -> None:
    """Our choice (issue 12): a body with no Content-Length is counted as it arrives; past the
    endpoint's limit the answer is 413 at once and the connection closes, so a 32 MiB upload is
    cut off after little more than the limit (what the socket buffers held), not read whole."""
    before = server.snapshot()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {urlsplit(server.url).netloc}\r\n"
        f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    status, headers, body, sent = raw_exchange(server.url, head, chunked(32 * 1024 * 1024))
    assert status == 413, body[:300]
    assert headers["connection"] == "close"
    assert sent < 8 * 1024 * 1024, sent
    if content_type == "application/json" or path in ("/token", "/revoke"):
        assert json.loads(body)["error"] == "invalid_request"
    else:
        assert headers["content-type"].startswith("text/html")
    assert server.snapshot() == before


@pytest.mark.parametrize(("path", "content_type", "limit"), ENDPOINTS)
def test_a_content_length_past_the_limit_is_refused_before_any_body_arrives(
    server: Server, path: str, content_type: str, limit: int
) -> None:
    """Our choice: a declared length over the limit is answered 413 at once; the server does not
    wait for (or read) the 512 MiB it announces."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {urlsplit(server.url).netloc}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {512 * 1024 * 1024}\r\n\r\n"
    ).encode()
    status, headers, _, sent = raw_exchange(server.url, head, iter(()))
    assert (status, headers["connection"], sent) == (413, "close", 0)


def test_a_registration_at_the_limit_is_still_accepted(server: Server) -> None:
    """The limit is on the body, not its contents: 64 KiB of JSON registers."""
    name_room = 64 * 1024 - len(json.dumps({"redirect_uris": [REDIRECT], "software_id": ""}))
    body = json.dumps({"redirect_uris": [REDIRECT], "software_id": "x" * name_room}).encode()
    assert len(body) == 64 * 1024
    response = server.http.post(
        f"{server.url}/register", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 201, response.text


# -- registration: per address, and the quota of unused clients -----------------------------------------


def register_from(url: str, address: str, **body: object) -> httpx2.Response:
    with httpx2.Client(timeout=15, transport=httpx2.HTTPTransport(local_address=address)) as http:
        return http.post(f"{url}/register", json={"redirect_uris": [REDIRECT], **body})


def test_one_address_may_register_only_so_many_clients_within_the_window(
    database_url: str, admin: Engine, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Our choice (issue 12: 300 clients in 1.2 s): ROWSCOPE_REGISTER_MAX_PER_ADDRESS registrations
    per address in ROWSCOPE_REGISTER_WINDOW; then 429 temporarily_unavailable with Retry-After,
    nothing stored; another address is not affected."""
    with serve(
        database_url,
        tmp_path_factory.mktemp("register-limit"),
        ROWSCOPE_REGISTER_MAX_PER_ADDRESS=str(PER_ADDRESS),
        ROWSCOPE_REGISTER_WINDOW="600",
    ) as url:
        server = Server(url, admin)
        for _ in range(PER_ADDRESS):
            assert register_from(url, "127.0.0.7").status_code == 201
        before = server.snapshot()
        refused = register_from(url, "127.0.0.7")
        assert (refused.status_code, refused.json()["error"]) == (429, "temporarily_unavailable")
        assert 1 <= int(refused.headers["retry-after"]) <= 600
        assert refused.headers["cache-control"] == "no-store"
        assert server.snapshot() == before
        assert register_from(url, "127.0.0.8").status_code == 201
        server.http.close()


def test_registration_stops_at_the_quota_of_unused_clients_until_one_is_used(
    database_url: str, admin: Engine, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Our choice: at most ROWSCOPE_MAX_UNUSED_CLIENTS registered clients that never got a token
    (younger than ROWSCOPE_UNUSED_CLIENT_TTL); then 429 with Retry-After until the oldest ages out.
    A client that gets a token leaves the count, so registration works again."""
    with admin.connect() as conn:
        unused = conn.exec_driver_sql(
            "SELECT count(*) FROM oauth_clients WHERE kind = 'registered' AND last_used_at IS NULL "
            "AND revoked_at IS NULL AND created_at > now() - interval '3600 seconds'"
        ).scalar_one()
    with serve(
        database_url,
        tmp_path_factory.mktemp("register-quota"),
        ROWSCOPE_MAX_UNUSED_CLIENTS=str(unused + 2),
        ROWSCOPE_UNUSED_CLIENT_TTL="3600",
    ) as url:
        server = Server(url, admin)
        first = server.register(client_name="quota one")
        server.register(client_name="quota two")
        before = server.snapshot()
        refused = server.http.post(f"{url}/register", json={"redirect_uris": [REDIRECT]})
        assert (refused.status_code, refused.json()["error"]) == (429, "temporarily_unavailable")
        assert 1 <= int(refused.headers["retry-after"]) <= 3600
        assert server.snapshot() == before
        browser = sign_in(url)
        try:
            server.tokens(browser, first)
        finally:
            browser.close()
        assert server.register(client_name="quota three").client_id
        server.http.close()


# -- metadata-document fetches: over the cap, 503 ------------------------------------------------------


def test_a_client_document_fetch_over_the_cap_is_503_at_authorize_and_token(
    database_url: str, admin: Engine, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Our choice (issue 12, fan-out): a new client_id URL that this process may not fetch now is a
    503 with Retry-After (an error page at /authorize, temporarily_unavailable at /token), not an
    "unknown client". The URLs here are refused before any packet (loopback), but each counts."""
    with serve(
        database_url,
        tmp_path_factory.mktemp("cimd-cap"),
        ROWSCOPE_CLIENT_DOCUMENT_FETCHES_PER_MINUTE="1",
    ) as url:
        server = Server(url, admin)
        first = server.http.get(f"{url}/authorize", params={"client_id": "https://127.0.0.1:1/a.json"})
        assert_error_page(first)  # fetched (refused as loopback): not registered
        page = server.http.get(f"{url}/authorize", params={"client_id": "https://127.0.0.1:1/b.json"})
        assert_error_page(page, 503)
        assert 1 <= int(page.headers["retry-after"]) <= 60
        token = server.http.post(
            f"{url}/token",
            data={"grant_type": "authorization_code", "client_id": "https://127.0.0.1:1/c.json", "code": "x"},
        )
        assert (token.status_code, token.json()["error"]) == (503, "temporarily_unavailable")
        assert 1 <= int(token.headers["retry-after"]) <= 60
        server.http.close()


# -- registered URIs -------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["client_uri", "logo_uri", "tos_uri", "policy_uri"])
@pytest.mark.parametrize(
    "value",
    [
        pytest.param("javascript:alert(document.cookie)", id="javascript"),
        pytest.param("data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=", id="data"),
        pytest.param("http://app.example/logo.png", id="http-not-loopback"),
        pytest.param("ftp://app.example/logo.png", id="ftp"),
        pytest.param(" javascript:alert(1)", id="leading-space"),
        pytest.param("//app.example/logo.png", id="scheme-relative"),
        pytest.param(7, id="not-a-string"),
    ],
)
def test_a_registered_uri_that_is_not_https_is_invalid_client_metadata(
    server: Server, key: str, value: object
) -> None:
    """Our choice (issue 12), after OAuth 2.1 §2.3.1's rule for redirect URIs: only https, or http on
    a loopback host, for any URI a page may link or load; refused whole, nothing stored."""
    before = server.snapshot()
    response = server.http.post(f"{server.url}/register", json={"redirect_uris": [REDIRECT], key: value})
    assert (response.status_code, response.json()["error"]) == (400, "invalid_client_metadata")
    assert server.snapshot() == before


def test_https_and_loopback_http_uris_are_registered_and_echoed(server: Server) -> None:
    """RFC 7591 §3.2.1: the registered metadata comes back in the response."""
    uris = {
        "client_uri": "https://app.example/",
        "logo_uri": "http://127.0.0.1:5173/logo.png",
        "tos_uri": "https://app.example/terms",
        "policy_uri": "http://localhost/privacy",
    }
    response = server.http.post(f"{server.url}/register", json={"redirect_uris": [REDIRECT], **uris})
    assert response.status_code == 201, response.text
    assert {k: response.json()[k] for k in uris} == uris


# -- loopback redirect URIs: any port ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registered", "requested"),
    [
        pytest.param("http://127.0.0.1/cb", "http://127.0.0.1:51004/cb", id="no-port-registered"),
        pytest.param("http://127.0.0.1:1234/cb", "http://127.0.0.1:51004/cb", id="other-port"),
        pytest.param("http://127.0.0.1:1234/cb", "http://127.0.0.1/cb", id="no-port-requested"),
        pytest.param("http://localhost/cb?app=1", "http://localhost:51004/cb?app=1", id="localhost"),
        pytest.param("http://[::1]:1234/cb", "http://[::1]:51004/cb", id="ipv6"),
    ],
)
def test_a_loopback_redirect_uri_matches_on_any_port(
    server: Server, alice: httpx2.Client, registered: str, requested: str
) -> None:
    """Spec-required: RFC 8252 §7.3 - the authorization server MUST allow any port for loopback
    redirect URIs; the code goes to the port asked for, and redeems with that redirect URI."""
    client = server.register(redirect_uris=[registered, "https://app.example/cb"])
    verifier, challenge = pkce()
    response = alice.get(
        f"{server.url}/authorize",
        params=dict(server.authorize_query(client, challenge, redirect_uri=requested)),
    )
    if response.status_code == 200:
        response = approve(server.url, alice, response)
    assert response.status_code == 303, response.text
    assert response.headers["location"].startswith(requested + ("&" if "?" in requested else "?"))
    redeemed = server.redeem(client, query_of(response)["code"], verifier, redirect_uri=requested)
    assert redeemed.status_code == 200, redeemed.text


@pytest.mark.parametrize(
    ("registered", "requested"),
    [
        pytest.param("http://127.0.0.1:1234/cb", "http://localhost:1234/cb", id="other-loopback-host"),
        pytest.param("http://127.0.0.1:1234/cb", "http://127.0.0.1:1234/cb/", id="other-path"),
        pytest.param("http://127.0.0.1:1234/cb", "http://127.0.0.1:1234/cb?x=1", id="other-query"),
        pytest.param("http://127.0.0.1:1234/cb", "https://127.0.0.1:1234/cb", id="other-scheme"),
        pytest.param("http://127.0.0.1:1234/cb", "http://127.0.0.2:1234/cb", id="not-loopback-name"),
        pytest.param("https://app.example/cb", "https://app.example:8443/cb", id="https-port"),
    ],
)
def test_only_the_port_of_a_loopback_redirect_uri_may_differ(
    server: Server, alice: httpx2.Client, registered: str, requested: str
) -> None:
    """Spec-required: OAuth 2.1 §2.3.1 exact matching for everything else - an error page, no
    redirect, nothing issued."""
    client = server.register(redirect_uris=[registered])
    before = server.snapshot()
    response = alice.get(
        f"{server.url}/authorize",
        params=dict(server.authorize_query(client, pkce()[1], redirect_uri=requested)),
    )
    assert_error_page(response)
    assert server.snapshot() == before


# -- the consent page --------------------------------------------------------------------------------


def test_the_consent_page_says_a_registered_client_s_name_is_unverified(
    server: Server, alice: httpx2.Client
) -> None:
    """Our choice (issue 12): a dynamically registered client named itself, so the page says in plain
    words that nobody verified it, and shows its id."""
    client = server.register(client_name="Claude")
    response = alice.get(f"{server.url}/authorize", params=dict(server.authorize_query(client, pkce()[1])))
    assert response.status_code == 200, response.text
    assert "<strong>Unverified application.</strong>" in response.text
    assert "“Claude” is the name this application gave itself" in response.text
    assert client.client_id in response.text


def test_the_consent_page_names_a_metadata_document_client_s_host_and_does_not_call_it_unverified() -> None:
    """Our choice: a Client ID Metadata Document client's name was fetched from its client_id's host
    (CIMD draft §3), which the page names."""
    response = pages.consent_page(
        client_name="Claude",
        client_id="https://claude.ai/oauth/mcp-oauth-client-metadata",
        verified=True,
        redirect_uri="https://claude.ai/api/mcp/auth_callback",
        scopes=["rowscope:read"],
        email="alice@example.com",
        csrf="x",
        signout_csrf="y",
        params={},
    )
    html = bytes(response.body).decode()
    assert "identified by <strong>claude.ai</strong>" in html
    assert "Unverified" not in html
