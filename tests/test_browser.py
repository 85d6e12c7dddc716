"""rowscope's sign-in and consent pages in a real headless browser (Debian's Chromium driven by
Playwright; Playwright's own browser download is never used): the authorization URL a client
builds, typed credentials, the consent decision, the redirect to a loopback client, the code
exchanged for a token, and that token calling a tool over /mcp."""

from __future__ import annotations

import os
import secrets
import shutil
import struct
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import anyio
import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from playwright.async_api import Browser, Page, Response, async_playwright

from rowscope.auth.scopes import DESCRIPTIONS
from rowscope.server.demo import DEMO_PASSWORD
from tests.conftest import structured
from tests.oauth import pkce
from tests.servers import serve

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As root, on a machine whose network is closed: no sandbox, and none of Chromium's own
# background traffic (its refused connections and Google look-ups only slow every start).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCOPE = "rowscope:read rowscope:write"


@dataclass
class Loopback:
    """The native client's side of the redirect: a loopback HTTP server (RFC 8252 §7.3) that
    records the query of every callback it receives; ``pages`` serves fixed HTML by path."""

    url: str
    callbacks: list[dict[str, str]] = field(default_factory=list)
    pages: dict[str, str] = field(default_factory=dict)

    @property
    def redirect_uri(self) -> str:
        return f"{self.url}/callback"


@contextmanager
def loopback() -> Iterator[Loopback]:
    state = Loopback(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/callback":
                state.callbacks.append({k: v[0] for k, v in parse_qs(parts.query).items()})
                body = "<!doctype html><title>done</title><h1>Callback received</h1>"
            elif parts.path in state.pages:
                body = state.pages[parts.path]
            else:
                self.send_error(404)
                return
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # keep pytest's output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def base_url(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(database_url, tmp_path_factory.mktemp("browser")) as url:
        yield url


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium. Missing here: skipped; missing in CI: a failure (.ci/run installs it)."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("CI must provide Debian's chromium (/usr/bin/chromium); .ci/run installs it")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    """A headless Chromium per test; closing it ends the browser's processes."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def client_app() -> Iterator[Loopback]:
    with loopback() as app:
        yield app


@dataclass
class Authorization:
    """One authorization request, as an MCP client (the SDK) builds it."""

    client_id: str
    redirect_uri: str
    verifier: str
    state: str
    url: str


async def start_authorization(base_url: str, redirect_uri: str, client_name: str) -> Authorization:
    """RFC 7591 registration of a public client, then the OAuth 2.1 + PKCE + RFC 8707 URL."""
    async with httpx2.AsyncClient(timeout=10) as http:
        registered = await http.post(
            f"{base_url}/register",
            json={
                "client_name": client_name,
                "redirect_uris": [redirect_uri],
                "grant_types": ["authorization_code", "refresh_token"],
                "token_endpoint_auth_method": "none",
                "application_type": "native",
            },
        )
    assert registered.status_code == 201, registered.text
    client_id = registered.json()["client_id"]
    verifier, challenge = pkce()
    state = secrets.token_urlsafe(16)
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": SCOPE,
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "resource": f"{base_url}/mcp",
    }
    return Authorization(client_id, redirect_uri, verifier, state, f"{base_url}/authorize?{urlencode(query)}")


async def new_page(browser: Browser) -> Page:
    page = await (await browser.new_context()).new_page()
    page.set_default_timeout(15_000)
    return page


async def sign_in(page: Page, base_url: str, url: str, password: str = DEMO_PASSWORD) -> None:
    """Open ``url``, land on the sign-in page, type the credentials and press "Sign in"."""
    await page.goto(url)
    assert page.url.startswith(f"{base_url}/signin?")
    assert await page.inner_text("h1") == "Sign in to rowscope"
    await page.fill("input[name=email]", "alice@example.com")
    await page.fill("input[name=password]", password)
    await page.click("button[name=action][value=signin]")
    await page.wait_for_load_state()


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG, read from its IHDR chunk (PNG spec §11.2.2)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


async def test_a_user_signs_in_approves_and_the_client_calls_a_tool_with_the_token(
    browser: Browser, base_url: str, client_app: Loopback, tmp_path: Path
) -> None:
    """Spec-required: OAuth 2.1 §4.1 code flow with PKCE (RFC 7636), RFC 9207 ``iss``, RFC 8252 §7.3
    loopback redirect, then MCP authorization 2025-11-25 bearer use; the pages are our design."""
    auth = await start_authorization(base_url, client_app.redirect_uri, "Browser Test App")
    page = await new_page(browser)
    await sign_in(page, base_url, auth.url)

    # The consent page names the client and says what each scope allows in plain words.
    assert page.url.startswith(f"{base_url}/authorize?")
    assert await page.inner_text("h1") == "Allow Browser Test App to use your rowscope data?"
    assert await page.locator("li").all_inner_texts() == [DESCRIPTIONS[s] for s in SCOPE.split()]
    assert "alice@example.com" in await page.inner_text("body")
    screenshot = tmp_path / "consent.png"
    data = await page.screenshot(path=str(screenshot), full_page=True)
    assert await anyio.Path(screenshot).read_bytes() == data
    width, height = png_size(data)
    assert width >= 300 and height >= 300 and len(data) > 5_000, (width, height, len(data))

    await page.click("button[name=action][value=approve]")
    await page.wait_for_url(f"{client_app.redirect_uri}?*")
    assert await page.inner_text("h1") == "Callback received"
    [callback] = client_app.callbacks
    assert set(callback) == {"code", "state", "iss"}
    assert callback["state"] == auth.state
    assert callback["iss"] == base_url

    async with httpx2.AsyncClient(timeout=10) as http:
        exchanged = await http.post(
            f"{base_url}/token",
            data={
                "grant_type": "authorization_code",
                "code": callback["code"],
                "redirect_uri": auth.redirect_uri,
                "client_id": auth.client_id,
                "code_verifier": auth.verifier,
                "resource": f"{base_url}/mcp",
            },
        )
    assert exchanged.status_code == 200, exchanged.text
    token = exchanged.json()
    assert token["token_type"].lower() == "bearer" and token["scope"] == SCOPE

    headers = {"Authorization": f"Bearer {token['access_token']}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(f"{base_url}/mcp", http_client=http)) as client,
    ):
        me = structured(await client.call_tool("query_records", {"model": "UserProfile"}))
    assert [row["email"] for row in me["rows"]] == ["alice@example.com"]


async def test_denying_consent_sends_access_denied_to_the_client(
    browser: Browser, base_url: str, client_app: Loopback
) -> None:
    """Spec-required: RFC 6749 §4.1.2.1 ``access_denied`` with the client's ``state``; RFC 9207 ``iss``."""
    auth = await start_authorization(base_url, client_app.redirect_uri, "Denied App")
    page = await new_page(browser)
    await sign_in(page, base_url, auth.url)
    assert await page.inner_text("h1") == "Allow Denied App to use your rowscope data?"
    await page.click("button[name=action][value=deny]")
    await page.wait_for_url(f"{client_app.redirect_uri}?*")
    [callback] = client_app.callbacks
    assert callback["error"] == "access_denied"
    assert callback["state"] == auth.state
    assert callback["iss"] == base_url
    assert "code" not in callback


async def test_a_wrong_password_shows_an_error_and_stays_on_the_sign_in_page(
    browser: Browser, base_url: str, client_app: Loopback
) -> None:
    """Our choice: a failed sign-in re-renders the form with an alert, keeps the email, sends nothing."""
    auth = await start_authorization(base_url, client_app.redirect_uri, "Wrong Password App")
    page = await new_page(browser)
    responses: list[Response] = []
    page.on("response", lambda r: responses.append(r))
    await sign_in(page, base_url, auth.url, password="not-the-password")
    assert page.url == f"{base_url}/signin"
    assert await page.inner_text("h1") == "Sign in to rowscope"
    assert await page.inner_text("[role=alert]") == "The email or password is not right."
    assert await page.input_value("input[name=email]") == "alice@example.com"
    assert await page.input_value("input[name=password]") == ""
    assert [r.status for r in responses if r.request.method == "POST"] == [401]
    assert client_app.callbacks == []

    # The form still works: the right password now reaches the consent page for the same request.
    await page.fill("input[name=password]", DEMO_PASSWORD)
    await page.click("button[name=action][value=signin]")
    await page.wait_for_load_state()
    assert await page.inner_text("h1") == "Allow Wrong Password App to use your rowscope data?"


async def test_the_consent_page_cannot_be_framed_by_another_site(
    browser: Browser, base_url: str, client_app: Loopback
) -> None:
    """Our choice, per OAuth 2.0 Security BCP (RFC 9700 §4.16) clickjacking advice: CSP
    ``frame-ancestors 'none'`` and ``X-Frame-Options: DENY``, enforced by the browser."""
    auth = await start_authorization(base_url, client_app.redirect_uri, "Framing App")
    page = await new_page(browser)
    await sign_in(page, base_url, auth.url)
    assert await page.inner_text("h1") == "Allow Framing App to use your rowscope data?"

    # Another origin frames the very same consent page (same signed-in browser), next to a control
    # frame of its own that must render, so a frame that stays empty means it was blocked.
    client_app.pages["/control"] = "<!doctype html><h1>control frame</h1>"
    client_app.pages["/frame"] = (
        "<!doctype html><title>attacker</title>"
        f"<iframe id=consent src='{auth.url}'></iframe><iframe id=control src='/control'></iframe>"
    )
    framed: list[Response] = []
    page.on("response", lambda r: framed.append(r) if r.url.startswith(f"{base_url}/authorize") else None)
    await page.goto(f"{client_app.url}/frame")
    await page.wait_for_load_state("load")

    control = page.frame_locator("#control")
    assert await control.locator("h1").inner_text() == "control frame"
    [response] = framed
    assert response.status == 200
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    consent_frame = await (await page.locator("#consent").element_handle()).content_frame()
    assert consent_frame is not None
    # Chromium replaces a refused frame with its own error document: none of the page is there.
    assert consent_frame.url == "chrome-error://chromewebdata/"
    assert "Allow Framing App" not in await consent_frame.content()
    assert await consent_frame.query_selector("button[value=approve]") is None
    assert client_app.callbacks == []


async def test_the_connections_page_shows_an_assistant_in_plain_words_and_sign_out_ends_the_session(
    browser: Browser, base_url: str, client_app: Loopback
) -> None:
    """Our choice: /connections names each assistant, what it may do in the consent page's words and
    when it was last used; its "Sign out" button (a POST with a CSRF token) ends the session."""
    auth = await start_authorization(base_url, client_app.redirect_uri, "Plain Words App")
    page = await new_page(browser)
    await sign_in(page, base_url, auth.url)
    await page.click("button[name=action][value=approve]")
    await page.wait_for_url(f"{client_app.redirect_uri}?*")
    [callback] = client_app.callbacks

    await page.goto(f"{base_url}/connections")
    assert await page.inner_text("h1") == "Assistants connected to your data"
    card = page.locator(".connection", has=page.locator("h2", has_text="Plain Words App"))
    assert await card.locator("li").all_inner_texts() == [DESCRIPTIONS[s] for s in SCOPE.split()]
    assert "Not used yet" in await card.inner_text()
    async with httpx2.AsyncClient(timeout=10) as http:
        exchanged = await http.post(
            f"{base_url}/token",
            data={
                "grant_type": "authorization_code",
                "code": callback["code"],
                "redirect_uri": auth.redirect_uri,
                "client_id": auth.client_id,
                "code_verifier": auth.verifier,
            },
        )
    assert exchanged.status_code == 200, exchanged.text
    await page.reload()
    assert "Last used in the last few minutes" in await card.inner_text()

    await page.click("button[name=action][value=signout]")
    await page.wait_for_url(f"{base_url}/signin?*")
    assert await page.inner_text("h1") == "Sign in to rowscope"
    assert await page.inner_text("[role=status]") == "You are signed out."
    assert "rowscope_session" not in {c["name"] for c in await page.context.cookies()}
    await page.goto(f"{base_url}/connections")
    assert page.url.startswith(f"{base_url}/signin?")
