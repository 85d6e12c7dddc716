"""Test helpers for rowscope's authorization server: a cookie-keeping HTTP "browser" that signs in
and answers the consent page (the headless-Chromium test drives the real pages), PKCE pairs, and
an in-memory token storage for the MCP SDK's OAuth client."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx2
from mcp.client.auth import TokenStorage
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

from rowscope.server.demo import DEMO_PASSWORD


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append({"__action__": values.get("action", "")})
        elif tag == "input" and self.forms and values.get("type") == "hidden":
            self.forms[-1][values.get("name", "")] = values.get("value", "")


def hidden_fields(html: str, index: int = 0) -> dict[str, str]:
    parser = _Forms()
    parser.feed(html)
    return parser.forms[index]


@dataclass
class Browser:
    """Follows rowscope's redirects by hand, keeping cookies, until a redirect leaves the server."""

    base_url: str
    email: str = "alice@example.com"
    password: str = DEMO_PASSWORD
    approve: bool = True
    http: httpx2.AsyncClient = field(default_factory=lambda: httpx2.AsyncClient(timeout=15))
    pages: list[str] = field(default_factory=list)

    async def authorize(self, url: str) -> dict[str, str]:
        """Walk the authorization URL through sign-in and consent; the query sent to the client."""
        response = await self.http.get(url)
        for _ in range(10):
            if response.status_code in (302, 303):
                target = urljoin(str(response.url), response.headers["location"])
                if not target.startswith(self.base_url):
                    return {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}
                response = await self.http.get(target)
                continue
            self.pages.append(response.text)
            if "action=/signin" in response.text:
                form = hidden_fields(response.text)
                form |= {"email": self.email, "password": self.password}
                response = await self.http.post(f"{self.base_url}/signin", data=form)
            elif "action=/authorize" in response.text:
                form = hidden_fields(response.text) | {"action": "approve" if self.approve else "deny"}
                form.pop("__action__")
                response = await self.http.post(f"{self.base_url}/authorize", data=form)
            else:
                raise AssertionError(f"unexpected page {response.status_code}: {response.text[:300]}")
        raise AssertionError("too many redirects")

    async def aclose(self) -> None:
        await self.http.aclose()


def title(html: str) -> str:
    found = re.search(r"<h1>(.*?)</h1>", html)
    return found.group(1) if found else ""


class MemoryStorage(TokenStorage):
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info
