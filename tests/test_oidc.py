"""Signing in through an upstream OpenID Connect provider: a small provider run by the test on
127.0.0.1 (discovery, /authorize that approves a configured user, /token minting RS256 ID tokens,
/jwks), ``rowscope serve`` configured to trust it, and the whole path an MCP client's user takes:
/authorize → sign-in page → "Sign in with …" → provider → callback → consent → code → token →
tool calls as the mapped user."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import json
import re
import secrets
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx2
import psycopg
import pytest
import uvicorn
from joserfc import jwt
from joserfc.jwk import RSAKey
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from rowscope.db.engine import DatabaseUrl
from rowscope.server import demo
from rowscope.server.settings import Settings
from tests.conftest import structured
from tests.oauth import hidden_fields, pkce, title
from tests.servers import ROWSCOPE, child_env, serve

CLIENT_ID, CLIENT_SECRET = "rowscope-at-test-idp", "test-idp-client-secret"
REDIRECT = "http://127.0.0.1:33418/callback"
SECRET_KEY = "k" * 32
TEST_DOMAIN = "oidc.example.com"  # every user these tests create has an address here


# -- the upstream provider ------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Provider:
    """An OpenID Connect provider that signs in ``claims`` without asking, on a loopback port.
    ``tamper`` spoils the next ID token; ``error`` makes /authorize refuse."""

    claims: dict[str, Any] = field(default_factory=dict)
    tamper: str | None = None
    error: str | None = None
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "idp-1"}))
    rogue: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "idp-1"}))
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    sock: socket.socket = field(default_factory=socket.socket)

    def __post_init__(self) -> None:
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)  # connections queue from now on: no need to wait for uvicorn
        self.issuer = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def app(self) -> Starlette:
        async def discovery(_: Request) -> Response:
            return JSONResponse(
                {
                    "issuer": self.issuer,
                    "authorization_endpoint": f"{self.issuer}/authorize",
                    "token_endpoint": f"{self.issuer}/token",
                    "jwks_uri": f"{self.issuer}/jwks",
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "code_challenge_methods_supported": ["S256"],
                    "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                }
            )

        async def jwks(_: Request) -> Response:
            return JSONResponse({"keys": [self.key.as_dict(private=False)]})

        async def authorize(request: Request) -> Response:
            query = dict(request.query_params)
            self.authorize_requests.append(query)
            assert query["client_id"] == CLIENT_ID and query["response_type"] == "code"
            back: dict[str, str] = {"state": query["state"]}
            if self.error:
                back |= {"error": self.error, "error_description": "the user said no"}
            else:
                code = secrets.token_urlsafe(16)
                self.codes[code] = query
                back["code"] = code
            return RedirectResponse(f"{query['redirect_uri']}?{urlencode(back)}", status_code=302)

        async def token(request: Request) -> Response:
            form = await request.form()
            basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
            asked = self.codes.pop(str(form.get("code")), None)
            if request.headers.get("authorization") != f"Basic {basic}":
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            verifier = str(form.get("code_verifier"))
            if (
                asked is None
                or form.get("redirect_uri") != asked["redirect_uri"]
                or b64url(hashlib.sha256(verifier.encode()).digest()) != asked["code_challenge"]
            ):
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            now = int(time.time())
            claims = {
                "iss": self.issuer,
                "aud": CLIENT_ID,
                "nonce": asked["nonce"],
                "iat": now,
                "exp": now + 300,
            }
            claims |= self.claims
            key = self.key
            match self.tamper:
                case "bad signature":
                    key = self.rogue
                case "wrong audience":
                    claims["aud"] = "some-other-client"
                case "wrong nonce":
                    claims["nonce"] = "not-the-nonce-rowscope-sent"
                case "wrong issuer":
                    claims["iss"] = "https://idp.example.net"
                case "expired":
                    claims |= {"iat": now - 7200, "exp": now - 3600}
            if self.tamper == "unsigned":
                header = b64url(json.dumps({"alg": "none"}).encode())
                id_token = f"{header}.{b64url(json.dumps(claims).encode())}."
            else:
                id_token = jwt.encode({"alg": "RS256", "kid": "idp-1"}, claims, key)
            return JSONResponse(
                {"access_token": secrets.token_urlsafe(16), "token_type": "Bearer", "id_token": id_token},
                headers={"Cache-Control": "no-store"},
            )

        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", discovery),
                Route("/jwks", jwks),
                Route("/authorize", authorize),
                Route("/token", token, methods=["POST"]),
            ]
        )


@contextlib.contextmanager
def running_provider() -> Iterator[Provider]:
    """A :class:`Provider` served on its loopback port while the block runs."""
    idp = Provider()
    server = uvicorn.Server(uvicorn.Config(idp.app(), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [idp.sock]}, daemon=True)
    thread.start()
    try:
        yield idp
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        idp.sock.close()


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    with running_provider() as idp:
        yield idp


@pytest.fixture
def idp(provider: Provider) -> Provider:
    provider.claims, provider.tamper, provider.error = {}, None, None
    return provider


# -- rowscope, the database, and a browser --------------------------------------------------------


def sql(database_url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    dsn = DatabaseUrl.parse(database_url).sqlalchemy.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


@pytest.fixture(scope="module")
def base_url(
    database_url: str, provider: Provider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    env = {
        "ROWSCOPE_OIDC_ISSUER": provider.issuer,
        "ROWSCOPE_OIDC_CLIENT_ID": CLIENT_ID,
        "ROWSCOPE_OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "ROWSCOPE_OIDC_NAME": "Test IdP",
        "ROWSCOPE_SECRET_KEY": SECRET_KEY,
    }
    try:
        with serve(database_url, tmp_path_factory.mktemp("oidc"), **env) as url:
            yield url
    finally:  # the users, identities and clients these tests made
        sql(database_url, "DELETE FROM user_identities WHERE provider = %s", provider.issuer)
        sql(database_url, "DELETE FROM user_profiles WHERE email LIKE %s", f"%@{TEST_DOMAIN}")
        sql(database_url, "DELETE FROM oauth_clients WHERE client_name = 'OIDC test client'")


def identities(database_url: str, issuer: str, subject: str) -> list[uuid.UUID]:
    rows = sql(
        database_url,
        "SELECT user_id FROM user_identities WHERE provider = %s AND subject = %s",
        issuer,
        subject,
    )
    return [row[0] for row in rows]


@dataclass
class Visit:
    """One browser taking an MCP client through rowscope's authorization with upstream sign-in."""

    base_url: str
    http: httpx2.AsyncClient = field(default_factory=lambda: httpx2.AsyncClient(timeout=15))
    verifier: str = ""
    client_id: str = ""

    async def upstream_url(self, return_to: str | None = None) -> str:
        """Register a client, open /authorize, and follow the sign-in page's upstream link."""
        registered = await self.http.post(
            f"{self.base_url}/register",
            json={
                "client_name": "OIDC test client",
                "redirect_uris": [REDIRECT],
                "grant_types": ["authorization_code"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
            },
        )
        assert registered.status_code == 201, registered.text
        self.client_id = registered.json()["client_id"]
        self.verifier, challenge = pkce()
        query = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": REDIRECT,
            "scope": "rowscope:read",
            "state": "client-state",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "resource": f"{self.base_url}/mcp",
        }
        to_signin = await self.http.get(f"{self.base_url}/authorize?{urlencode(query)}")
        assert to_signin.status_code == 303
        signin = await self.http.get(urljoin(self.base_url, to_signin.headers["location"]))
        link = re.search(r"<a href='(/signin/oidc\?[^']*)'>Sign in with Test IdP</a>", signin.text)
        assert link is not None, signin.text
        target = html.unescape(link.group(1))
        if return_to is not None:
            target = "/signin/oidc?" + urlencode({"return_to": return_to})
        started = await self.http.get(self.base_url + target)
        assert started.status_code == 302, started.text
        self.started = started
        return started.headers["location"]

    async def callback(self, upstream_url: str) -> httpx2.Response:
        """The provider's answer, delivered back to rowscope's callback."""
        answer = await self.http.get(upstream_url)
        assert answer.status_code == 302
        return await self.http.get(answer.headers["location"])

    def signed_in(self) -> bool:
        return "rowscope_session" in self.http.cookies

    async def connect(
        self, callback: httpx2.Response, model: str = "UserProfile", field: str = "email"
    ) -> list[Any]:
        """From a successful callback: consent, code, token, and the ``field`` of the rows of
        ``model`` query_records returns (the signed-in user's emails by default)."""
        assert callback.status_code == 303, callback.text
        consent = await self.http.get(urljoin(self.base_url, callback.headers["location"]))
        assert title(consent.text).startswith("Allow OIDC test client"), consent.text
        form = hidden_fields(consent.text) | {"action": "approve"}
        form.pop("__action__")
        approved = await self.http.post(f"{self.base_url}/authorize", data=form)
        code = parse_qs(urlsplit(approved.headers["location"]).query)["code"][0]
        issued = await self.http.post(
            f"{self.base_url}/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT,
                "client_id": self.client_id,
                "code_verifier": self.verifier,
                "resource": f"{self.base_url}/mcp",
            },
        )
        assert issued.status_code == 200, issued.text
        headers = {"Authorization": f"Bearer {issued.json()['access_token']}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=30) as http,
            Client(streamable_http_client(f"{self.base_url}/mcp", http_client=http)) as client,
        ):
            found = structured(await client.call_tool("query_records", {"model": model}))
        return [row[field] for row in found["rows"]]

    async def sign_in(self) -> list[str]:
        return await self.connect(await self.callback(await self.upstream_url()))


@pytest.fixture
async def visit(base_url: str) -> AsyncIterator[Visit]:
    v = Visit(base_url)
    try:
        yield v
    finally:
        await v.http.aclose()


def subject() -> str:
    return f"idp|{secrets.token_hex(6)}"


# -- sign-in and mapping --------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.slow
async def test_a_first_upstream_sign_in_creates_the_user_and_tools_run_as_them(
    idp: Provider, visit: Visit, database_url: str
) -> None:
    """Our choice: a verified email nobody has yet becomes a new rowscope user on first sign-in."""
    sub, email = subject(), f"new-{secrets.token_hex(4)}@{TEST_DOMAIN}"
    idp.claims = {"sub": sub, "email": email, "email_verified": True, "name": "New Person"}
    assert await visit.sign_in() == [email]
    [user] = identities(database_url, idp.issuer, sub)
    assert sql(database_url, "SELECT email, display_name FROM user_profiles WHERE id = %s", user) == [
        (email, "New Person")
    ]


@pytest.mark.anyio
@pytest.mark.slow
async def test_the_rp_sends_state_nonce_and_s256_pkce_and_keeps_them_in_a_scoped_cookie(
    idp: Provider, visit: Visit
) -> None:
    """OIDC Core §3.1.2.1 (state, nonce), RFC 7636 §4.3 (S256); the cookie attributes are our choice."""
    idp.claims = {
        "sub": subject(),
        "email": f"x-{secrets.token_hex(4)}@{TEST_DOMAIN}",
        "email_verified": True,
    }
    await visit.upstream_url()
    asked = idp.authorize_requests[-1]
    assert asked["code_challenge_method"] == "S256" and asked["state"] and asked["nonce"]
    assert asked["scope"].split() == ["openid", "email", "profile"]
    assert asked["redirect_uri"] == f"{visit.base_url}/signin/oidc/callback"
    cookie = visit.started.headers["set-cookie"].lower()
    assert cookie.startswith("rowscope_oidc=")
    for attribute in ("path=/signin/oidc;", "max-age=600;", "httponly", "samesite=lax"):
        assert attribute in cookie


@pytest.mark.anyio
@pytest.mark.slow
async def test_an_existing_identity_maps_to_the_same_user_even_when_the_email_changes(
    idp: Provider, base_url: str, database_url: str
) -> None:
    """OIDC Core §5.7: only iss + sub identify the end-user; the email claim may change."""
    sub, email = subject(), f"same-{secrets.token_hex(4)}@{TEST_DOMAIN}"
    idp.claims = {"sub": sub, "email": email, "email_verified": True}
    for claims in ({}, {"email": f"renamed-{secrets.token_hex(4)}@{TEST_DOMAIN}", "email_verified": False}):
        idp.claims |= claims
        visit = Visit(base_url)
        try:
            assert await visit.sign_in() == [email]
        finally:
            await visit.http.aclose()
    assert len(identities(database_url, idp.issuer, sub)) == 1


@pytest.mark.anyio
@pytest.mark.slow
async def test_a_verified_email_of_an_existing_user_links_to_that_user(
    idp: Provider, visit: Visit, database_url: str
) -> None:
    """Our choice: a provider-verified email links to the rowscope user who has it (carol)."""
    sub = subject()
    idp.claims = {"sub": sub, "email": "Carol@Example.com", "email_verified": True}
    try:
        assert await visit.sign_in() == ["carol@example.com"]
        assert identities(database_url, idp.issuer, sub) == [demo.CAROL]
    finally:
        sql(database_url, "DELETE FROM user_identities WHERE subject = %s", sub)


@pytest.mark.anyio
@pytest.mark.slow
async def test_a_second_subject_with_a_linked_users_email_is_refused(
    idp: Provider, base_url: str, database_url: str
) -> None:
    """Our choice: a user already linked to another subject of this issuer is not linked again
    (a recycled address is not the same person)."""
    first, second = subject(), subject()
    try:
        for sub, status in ((first, 303), (second, 403)):
            idp.claims = {"sub": sub, "email": "carol@example.com", "email_verified": True}
            visit = Visit(base_url)
            try:
                answer = await visit.callback(await visit.upstream_url())
                assert answer.status_code == status
                assert visit.signed_in() is (status == 303)
            finally:
                await visit.http.aclose()
        assert identities(database_url, idp.issuer, second) == []
    finally:
        sql(database_url, "DELETE FROM user_identities WHERE subject IN (%s, %s)", first, second)


@pytest.mark.anyio
@pytest.mark.slow
@pytest.mark.parametrize(
    "email, verified",
    [
        pytest.param("carol@example.com", False, id="existing-user-false"),
        pytest.param("carol@example.com", None, id="existing-user-claim-missing"),
        pytest.param("carol@example.com", "true", id="existing-user-string-true"),
        pytest.param(f"nobody@{TEST_DOMAIN}", False, id="unknown-email-false"),
        pytest.param(None, True, id="no-email-at-all"),
    ],
)
async def test_an_unverified_email_is_refused_and_links_or_creates_nothing(
    idp: Provider, visit: Visit, database_url: str, email: str | None, verified: object
) -> None:
    """Our choice: without ``email_verified: true`` (a JSON boolean, OIDC Core §5.1) there is no
    link and no new account (which would allow pre-hijacking an address); the page says so."""
    sub = subject()
    idp.claims = {"sub": sub}
    if email is not None:
        idp.claims["email"] = email
    if verified is not None:
        idp.claims["email_verified"] = verified
    answer = await visit.callback(await visit.upstream_url())
    assert (answer.status_code, title(answer.text)) == (403, "Sign-in refused")
    assert not visit.signed_in()
    assert identities(database_url, idp.issuer, sub) == []
    assert sql(database_url, "SELECT 1 FROM user_profiles WHERE email = %s", f"nobody@{TEST_DOMAIN}") == []


# -- refusals -------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.slow
@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param("bad signature", id="bad-signature"),  # OIDC Core §3.1.3.7 step 6
        pytest.param("unsigned", id="alg-none"),  # step 7: the alg the provider declared
        pytest.param("wrong audience", id="wrong-audience"),  # step 3
        pytest.param("wrong issuer", id="wrong-issuer"),  # step 2
        pytest.param("wrong nonce", id="wrong-nonce"),  # step 11
        pytest.param("expired", id="expired"),  # step 9
    ],
)
async def test_a_tampered_id_token_is_refused_with_no_session(
    idp: Provider, visit: Visit, database_url: str, tamper: str
) -> None:
    """OIDC Core §3.1.3.7: an ID token failing any validation step signs nobody in."""
    sub = subject()
    idp.claims = {"sub": sub, "email": "carol@example.com", "email_verified": True}
    idp.tamper = tamper
    answer = await visit.callback(await visit.upstream_url())
    assert (answer.status_code, title(answer.text)) == (401, "Sign-in refused")
    assert not visit.signed_in()
    assert identities(database_url, idp.issuer, sub) == []


@pytest.mark.anyio
@pytest.mark.slow
@pytest.mark.parametrize(
    "other_browser", [pytest.param(False, id="foreign-state"), pytest.param(True, id="other-browser")]
)
async def test_a_callback_whose_state_was_not_issued_to_this_browser_is_refused(
    idp: Provider, visit: Visit, other_browser: bool
) -> None:
    """RFC 6749 §10.12 / OIDC Core §3.1.2.7: state binds the callback to the browser that started."""
    idp.claims = {"sub": subject(), "email": "carol@example.com", "email_verified": True}
    upstream = await visit.upstream_url()
    answer = await visit.http.get(upstream)
    callback = answer.headers["location"]
    if other_browser:  # a code and state fixated into a victim's browser
        async with httpx2.AsyncClient(timeout=15) as victim:
            refused = await victim.get(callback)
        assert "rowscope_session" not in victim.cookies
    else:
        query = parse_qs(urlsplit(callback).query)
        forged = {"code": query["code"][0], "state": "forged-state"}
        refused = await visit.http.get(f"{visit.base_url}/signin/oidc/callback?{urlencode(forged)}")
    assert (refused.status_code, title(refused.text)) == (400, "Sign-in refused")
    assert not visit.signed_in()


@pytest.mark.anyio
@pytest.mark.slow
async def test_a_state_is_single_use(idp: Provider, visit: Visit) -> None:
    """OIDC Core §3.1.2.7: replaying a callback after its sign-in gets no second session."""
    idp.claims = {
        "sub": subject(),
        "email": f"once-{secrets.token_hex(4)}@{TEST_DOMAIN}",
        "email_verified": True,
    }
    answer = await visit.http.get(await visit.upstream_url())
    callback = answer.headers["location"]
    assert (await visit.http.get(callback)).status_code == 303
    visit.http.cookies.delete("rowscope_session")
    assert (await visit.http.get(callback)).status_code == 400
    assert not visit.signed_in()


@pytest.mark.anyio
@pytest.mark.slow
async def test_an_error_from_the_provider_ends_on_a_page_with_no_session(idp: Provider, visit: Visit) -> None:
    """RFC 6749 §4.1.2.1: the provider's error comes back to the callback; we show a page."""
    idp.error = "access_denied"
    answer = await visit.callback(await visit.upstream_url())
    assert (answer.status_code, title(answer.text)) == (403, "Sign-in refused")
    assert "access_denied" in answer.text
    assert not visit.signed_in()


@pytest.mark.anyio
@pytest.mark.slow
async def test_return_to_outside_rowscope_is_replaced_by_the_connections_page(
    idp: Provider, visit: Visit
) -> None:
    """Our choice (no open redirect): after signing in only rowscope's own pages are destinations."""
    idp.claims = {
        "sub": subject(),
        "email": f"ret-{secrets.token_hex(4)}@{TEST_DOMAIN}",
        "email_verified": True,
    }
    answer = await visit.callback(await visit.upstream_url(return_to="https://evil.example/"))
    assert (answer.status_code, answer.headers["location"]) == (303, "/connections")
    assert visit.signed_in()


# -- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"secret_key": None}, id="no-secret-key"),
        pytest.param({"secret_key": "k" * 31}, id="short-secret-key"),
        pytest.param({"oidc_client_id": None}, id="no-client-id"),
        pytest.param({"oidc_issuer": "http://idp.example.com"}, id="http-issuer"),
        pytest.param({"oidc_issuer": "https://idp.example.com?tenant=1"}, id="issuer-with-query"),
        pytest.param({"oidc_scopes": "email profile"}, id="scopes-without-openid"),
    ],
)
def test_incomplete_oidc_settings_fail_fast(overrides: dict[str, Any]) -> None:
    """Our choice (STYLE: validators fail fast): an unusable upstream configuration never starts."""
    good = {"oidc_issuer": "https://idp.example.com", "oidc_client_id": "rowscope", "secret_key": SECRET_KEY}
    Settings(**good)
    with pytest.raises(ValidationError):
        Settings(**(good | overrides))


def test_the_discovery_url_is_the_issuer_plus_the_well_known_path() -> None:
    """OpenID Connect Discovery §4: a trailing slash of the issuer is removed before appending."""
    settings = Settings(
        oidc_issuer="https://x.supabase.co/auth/v1/", oidc_client_id="c", secret_key=SECRET_KEY
    )
    assert settings.oidc_discovery_url == "https://x.supabase.co/auth/v1/.well-known/openid-configuration"


@pytest.mark.slow
def test_rowscope_serve_refuses_an_issuer_without_a_secret_key() -> None:
    """Our choice: the process exits at once with the setting's name, before touching anything."""
    env = child_env(ROWSCOPE_OIDC_ISSUER="https://idp.example.com", ROWSCOPE_OIDC_CLIENT_ID="rowscope")
    done = subprocess.run(
        [ROWSCOPE, "serve", "--port", "0"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert "ROWSCOPE_SECRET_KEY" in done.stderr
