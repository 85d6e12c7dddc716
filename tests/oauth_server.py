"""A real ``rowscope serve`` for OAuth tests, with the clients, browser sessions and assertions the
negative catalogue and the lifecycle tests share. Registered as a pytest plugin in conftest.py,
so its fixtures (``server``, ``clients``, ``alice``) are available to every test module."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from sqlalchemy import Engine, text

from rowscope.server import demo
from rowscope.server.demo import DEMO_PASSWORD
from tests.oauth import hidden_fields, pkce
from tests.servers import serve

REDIRECT = "http://127.0.0.1:33418/callback"
BOTH = "rowscope:read rowscope:write"
STATE = "st-negative"
TOOLS_LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
ALICE_COACH = str(next(s["id"] for s in demo.SPARKS if s["name"] == "Alice's Writing Coach"))
SNAPSHOT = text(
    """SELECT
    (SELECT count(*) FROM oauth_clients) AS clients,
    (SELECT count(*) FROM oauth_clients WHERE revoked_at IS NULL) AS live_clients,
    (SELECT count(*) FROM oauth_codes) AS codes,
    (SELECT count(*) FROM oauth_codes WHERE used_at IS NOT NULL) AS used_codes,
    (SELECT count(*) FROM oauth_tokens) AS tokens,
    (SELECT count(*) FROM oauth_tokens WHERE revoked_at IS NULL) AS live_tokens,
    (SELECT count(*) FROM oauth_tokens WHERE rotated_at IS NOT NULL) AS rotated_tokens,
    (SELECT count(*) FROM oauth_consents) AS consents,
    (SELECT coalesce(string_agg(scope, ',' ORDER BY id), '') FROM oauth_consents) AS consent_scopes,
    (SELECT count(*) FROM auth_sessions) AS sessions"""
)


@dataclass(frozen=True)
class Registered:
    """A client registered through /register, with what it needs to authenticate."""

    client_id: str
    method: str
    redirect_uri: str = REDIRECT
    secret: str | None = None

    def credentials(self) -> tuple[tuple[str, str] | None, dict[str, str]]:
        """(Basic auth pair, form fields) for client authentication as registered."""
        if self.method == "client_secret_basic":
            assert self.secret is not None
            return (self.client_id, self.secret), {}
        if self.method == "client_secret_post":
            assert self.secret is not None
            return None, {"client_id": self.client_id, "client_secret": self.secret}
        return None, {"client_id": self.client_id}


def query_of(response: httpx2.Response) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(response.headers["location"]).query).items()}


def sign_in(url: str, email: str = "alice@example.com", password: str = DEMO_PASSWORD) -> httpx2.Client:
    """A cookie-keeping client signed in through the real sign-in form."""
    http = httpx2.Client(timeout=15)
    form = hidden_fields(http.get(f"{url}/signin").text)
    form.pop("__action__")
    response = http.post(f"{url}/signin", data=form | {"email": email, "password": password})
    assert response.status_code == 303, response.text
    return http


@dataclass
class Server:
    """A running ``rowscope serve``, a superuser engine on its database, and request helpers."""

    url: str
    engine: Engine
    http: httpx2.Client = field(default_factory=lambda: httpx2.Client(timeout=15))

    @property
    def resource(self) -> str:
        return f"{self.url}/mcp"

    def snapshot(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return dict(conn.execute(SNAPSHOT).mappings().one())

    def sql(self, statement: str, **params: Any) -> int:
        """Run one data-changing statement; the number of rows it touched."""
        with self.engine.begin() as conn:
            return conn.execute(text(statement), params).rowcount

    def scalar(self, statement: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(statement), params).scalar()

    def register(self, **body: Any) -> Registered:
        body = {
            "client_name": "negative catalogue",
            "redirect_uris": [REDIRECT],
            "grant_types": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_method": "none",
        } | body
        response = self.http.post(f"{self.url}/register", json=body)
        assert response.status_code == 201, response.text
        data = response.json()
        return Registered(
            data["client_id"],
            data["token_endpoint_auth_method"],
            body["redirect_uris"][0],
            data.get("client_secret"),
        )

    def authorize_query(
        self, client: Registered, challenge: str, **over: str | None
    ) -> list[tuple[str, str]]:
        params: dict[str, str | None] = {
            "response_type": "code",
            "client_id": client.client_id,
            "redirect_uri": client.redirect_uri,
            "scope": BOTH,
            "state": STATE,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "resource": self.resource,
        } | over
        return [(k, v) for k, v in params.items() if v is not None]

    def code(self, browser: httpx2.Client, client: Registered, **over: str | None) -> tuple[str, str]:
        """(code, verifier) through /authorize, approving the consent page if one is shown."""
        verifier, challenge = pkce()
        response = browser.get(
            f"{self.url}/authorize", params=self.authorize_query(client, challenge, **over)
        )
        if response.status_code == 200:
            response = approve(self.url, browser, response)
        assert response.status_code == 303, response.text
        return query_of(response)["code"], verifier

    def token(self, client: Registered, form: dict[str, str]) -> httpx2.Response:
        auth, fields = client.credentials()
        return self.http.post(f"{self.url}/token", data=fields | form, auth=auth)

    def redeem(self, client: Registered, code: str, verifier: str, **extra: str) -> httpx2.Response:
        form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier}
        return self.token(client, form | {"redirect_uri": client.redirect_uri} | extra)

    def tokens(self, browser: httpx2.Client, client: Registered, **over: str | None) -> dict[str, Any]:
        response = self.redeem(client, *self.code(browser, client, **over))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def refresh(self, client: Registered, refresh_token: str, **extra: str) -> httpx2.Response:
        return self.token(client, {"grant_type": "refresh_token", "refresh_token": refresh_token} | extra)

    def revoke(self, client: Registered, token: str) -> httpx2.Response:
        auth, fields = client.credentials()
        return self.http.post(f"{self.url}/revoke", data=fields | {"token": token}, auth=auth)

    def mcp(
        self, token: str | None, body: dict[str, Any] = TOOLS_LIST, path: str = "/mcp"
    ) -> httpx2.Response:
        headers = MCP_HEADERS | ({"Authorization": f"Bearer {token}"} if token else {})
        return self.http.post(f"{self.url}{path}", json=body, headers=headers)


def approve(
    url: str, browser: httpx2.Client, consent: httpx2.Response, action: str = "approve"
) -> httpx2.Response:
    form = hidden_fields(consent.text)
    form.pop("__action__")
    return browser.post(f"{url}/authorize", data=form | {"action": action})


@pytest.fixture(scope="module")
def server(database_url: str, admin: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``rowscope serve`` for one test module, with a superuser engine to look at its tables."""
    with serve(database_url, tmp_path_factory.mktemp("oauth")) as url:
        running = Server(url, admin)
        try:
            yield running
        finally:
            running.http.close()


# -- fixtures and helpers of this module ------------------------------------------------------------


@dataclass(frozen=True)
class Clients:
    public: Registered
    other: Registered
    basic: Registered
    post: Registered


@pytest.fixture(scope="module")
def clients(server: Server) -> Clients:
    return Clients(
        public=server.register(),
        other=server.register(client_name="another public client"),
        basic=server.register(token_endpoint_auth_method="client_secret_basic"),
        post=server.register(token_endpoint_auth_method="client_secret_post"),
    )


@pytest.fixture(scope="module")
def alice(server: Server, clients: Clients) -> Iterator[httpx2.Client]:
    """Alice's browser, signed in, having approved both scopes for every client in ``clients``."""
    browser = sign_in(server.url)
    try:
        for client in (clients.public, clients.other, clients.basic, clients.post):
            server.code(browser, client)
        yield browser
    finally:
        browser.close()


def assert_oauth_error(response: httpx2.Response, status: int, error: str) -> None:
    assert response.status_code < 500, response.text
    assert (response.status_code, response.json()["error"]) == (status, error), response.text
    assert response.headers["cache-control"] == "no-store"


def assert_error_page(response: httpx2.Response, status: int = 400) -> None:
    assert response.status_code == status, response.text
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")


def assert_redirect_error(server: Server, response: httpx2.Response, redirect_uri: str, error: str) -> None:
    assert response.status_code == 303, response.text
    assert response.headers["location"].startswith(redirect_uri + "?")
    query = query_of(response)
    assert query["error"] == error
    assert query["iss"] == server.url
    assert "code" not in query


def assert_bearer_refused(response: httpx2.Response, error: str | None = "invalid_token") -> None:
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    if error is None:
        assert "error=" not in challenge
    else:
        assert f'error="{error}"' in challenge


def hashed(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()
