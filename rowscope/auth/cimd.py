"""OAuth Client ID Metadata Documents: a ``client_id`` that is an https URL names its own metadata.

Implements draft-ietf-oauth-client-id-metadata-document-01 ("CIMD"; section numbers below are that
revision's) as used by the MCP 2025-11-25 authorization spec, "Client ID Metadata Documents". The
authorization server fetches the URL and treats the JSON it gets back as the client's registration.

The ``client_id`` URL (draft §3), checked before any network traffic:
- scheme ``https``, a host, a path other than ``/``; no fragment, no userinfo, no ``.``/``..``
  segments (percent-encoded ones too); at most 2048 printable ASCII characters (our choice).

The fetch (draft §4, §6.5 SSRF, §6.6 size; MCP security best practices "SSRF"):
- https only; the host is resolved here and refused if *any* address is not globally routable
  (private, loopback, link-local incl. 169.254.169.254, CGNAT, multicast, reserved, unspecified, and
  IPv4 embedded in IPv6 by mapping, 6to4 or NAT64). Literal IP hosts are checked the same way.
- The TCP connection is pinned to the vetted address by ``_PinnedBackend`` (an httpcore2 network
  backend), so no second DNS lookup happens (DNS rebinding); TLS SNI, certificate checking and
  ``Host`` still use the hostname.
- One GET with only ``Accept`` and ``User-Agent``: no cookies, no credentials. Redirects are not
  followed; only ``200`` with an ``application/json`` media type is accepted; the body is streamed and
  cut off after ``max_bytes``; resolution, connect and read share one ``timeout``.

The document (draft §4.1, RFC 7591 §2): a JSON object whose ``client_id`` equals the URL exactly
(simple string comparison, no normalisation); a non-empty ``client_name`` (≤ 200 characters);
non-empty ``redirect_uris``, each https or http on a loopback host (MCP: "localhost or HTTPS"),
without fragments; no ``client_secret``/``client_secret_expires_at``; ``token_endpoint_auth_method``
``none`` (default; we accept public clients only); ``grant_types`` ⊆ {authorization_code,
refresh_token}; ``response_types`` ⊆ {code}. Duplicate JSON keys are refused (our choice: no parser
differentials). ``client_uri``/``logo_uri`` that are not https URLs are dropped (cosmetic only).

Caching (draft §4.4): per URL until ``expires_at``, from ``Cache-Control: max-age`` clamped to
[60 s, 1 day], default 1 hour, ``no-store``/``no-cache`` give 60 s; LRU-bounded. Failures are
remembered for ``FAILURE_TTL`` (10 s, our choice) so the server cannot be used to hammer a host.
Concurrent ``get``s of one URL share one fetch. Error descriptions never include response content.

Fan-out (our choice; MCP security best practices "SSRF"): every new ``client_id`` URL is an outbound
fetch that anyone can trigger, so a fetcher runs at most ``max_concurrent`` fetches at once and
starts at most ``per_minute`` in any sliding minute. A fetch over either limit is not started and
fails at once with :class:`FetchesExhausted` (``temporarily_unavailable``, with the seconds to wait);
it is not remembered as the URL's failure, since the URL did nothing wrong. Cached documents need
no fetch and are answered whatever the load. The limits are per process.
"""

from __future__ import annotations

import ipaddress
import json
import math
import socket
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio
import httpcore2

FAILURE_TTL = 10.0
MAX_URL_LENGTH = 2048
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
_GRANT_TYPES = frozenset({"authorization_code", "refresh_token"})
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

Resolver = Callable[[str, int], Awaitable[list[str]]]


class ClientDocumentError(Exception):
    """The client_id URL or its document is unacceptable. ``description`` is short and safe to show
    (an OAuth ``error_description``); ``error`` is the OAuth error code."""

    def __init__(self, description: str, error: str = "invalid_client") -> None:
        super().__init__(description)
        self.description = description
        self.error = error


class FetchesExhausted(ClientDocumentError):
    """No fetch may start now: the fetcher's concurrent or per-minute fetches are all taken."""

    def __init__(self, description: str, retry_after: int) -> None:
        super().__init__(description, error="temporarily_unavailable")
        self.retry_after = max(1, retry_after)


@dataclass(frozen=True)
class ClientDocument:
    client_id: str
    client_name: str
    redirect_uris: tuple[str, ...]
    token_endpoint_auth_method: str
    grant_types: tuple[str, ...]
    response_types: tuple[str, ...]
    scope: str | None
    client_uri: str | None
    logo_uri: str | None
    expires_at: float


@dataclass(frozen=True)
class _Failure:
    description: str
    expires_at: float


def is_client_document_url(client_id: str) -> bool:
    """Whether ``client_id`` has the shape draft §3 requires of a client identifier URL."""
    if not 0 < len(client_id) <= MAX_URL_LENGTH or not all(" " < c < "\x7f" for c in client_id):
        return False
    if "#" in client_id:
        return False
    try:
        parts = urlsplit(client_id)
        port = parts.port
    except ValueError:
        return False
    if not client_id.startswith("https://") or "@" in parts.netloc or not parts.hostname or port == 0:
        return False
    if parts.path in ("", "/"):
        return False
    return all(unquote(segment) not in (".", "..") for segment in parts.path.split("/"))


def is_public_address(address: str) -> bool:
    """Whether ``address`` is globally routable, looking inside IPv6 forms that embed IPv4."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(str(embedded))
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class _PinnedBackend(httpcore2.AsyncNetworkBackend):
    """Connects to the pre-vetted address whatever the pool asks for; TLS still uses the hostname."""

    def __init__(self, host: str, port: int, address: str) -> None:
        self._host, self._port, self._address = host, port, address
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore2's backend signature
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        if (host.strip("[]").lower(), port) != (self._host, self._port):
            raise httpcore2.ConnectError("connection to an unvetted destination")
        return await self._inner.connect_tcp(self._address, port, timeout, local_address, socket_options)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore2's backend signature
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise httpcore2.ConnectError("unix sockets are not used")

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


def _lifetime(cache_control: str) -> float:
    """Seconds to cache a document, from its Cache-Control header (draft §4.4; clamp is ours)."""
    directives = [d.strip().lower() for d in cache_control.split(",") if d.strip()]
    if "no-store" in directives or "no-cache" in directives:
        return 60.0
    for directive in directives:
        name, _, value = directive.partition("=")
        if name.strip() == "max-age":
            try:
                return float(min(max(int(value.strip().strip('"')), 60), 86400))
            except ValueError:
                break
    return 3600.0


def _is_redirect_uri(value: object) -> bool:
    if not isinstance(value, str) or "#" in value or len(value) > MAX_URL_LENGTH:
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    if not parts.hostname or "@" in parts.netloc:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS)


def _optional_https(value: object) -> str | None:
    """A cosmetic URL (client_uri, logo_uri) if it is a plain https URL, else None (our choice)."""
    if not isinstance(value, str) or not all(" " < c < "\x7f" for c in value):
        return None
    return value if _is_redirect_uri(value) and value.startswith("https://") else None


def _string_list(data: dict[str, Any], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ClientDocumentError(f"client metadata {key} must be a non-empty list of strings")
    return tuple(value)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def parse_document(client_id: str, body: bytes, expires_at: float) -> ClientDocument:
    """Validate a fetched document against draft §4.1 and our public-client policy."""
    try:
        data = json.loads(body, object_pairs_hook=_reject_duplicates)
    except (ValueError, RecursionError):
        raise ClientDocumentError("client metadata document is not valid JSON") from None
    if not isinstance(data, dict):
        raise ClientDocumentError("client metadata document is not a JSON object")
    if data.get("client_id") != client_id:
        raise ClientDocumentError("client metadata client_id does not match the URL it was fetched from")
    if "client_secret" in data or "client_secret_expires_at" in data:
        raise ClientDocumentError("client metadata document must not contain a client secret")
    name = data.get("client_name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise ClientDocumentError("client metadata client_name must be a non-empty string of <= 200 chars")
    if "redirect_uris" not in data:
        raise ClientDocumentError("client metadata redirect_uris is required")
    redirect_uris = _string_list(data, "redirect_uris", ())
    if not all(_is_redirect_uri(uri) for uri in redirect_uris):
        raise ClientDocumentError("client metadata redirect_uris must be https or loopback http URLs")
    if data.get("token_endpoint_auth_method", "none") != "none":
        raise ClientDocumentError("only token_endpoint_auth_method 'none' is supported")
    grant_types = _string_list(data, "grant_types", ("authorization_code",))
    if not set(grant_types) <= _GRANT_TYPES:
        raise ClientDocumentError("client metadata grant_types contains an unsupported grant type")
    response_types = _string_list(data, "response_types", ("code",))
    if set(response_types) != {"code"}:
        raise ClientDocumentError("client metadata response_types must be ['code']")
    scope = data.get("scope")
    if scope is not None and not isinstance(scope, str):
        raise ClientDocumentError("client metadata scope must be a string")
    return ClientDocument(
        client_id=client_id,
        client_name=name,
        redirect_uris=redirect_uris,
        token_endpoint_auth_method="none",  # noqa: S106 - an auth method name, not a secret
        grant_types=grant_types,
        response_types=response_types,
        scope=scope,
        client_uri=_optional_https(data.get("client_uri")),
        logo_uri=_optional_https(data.get("logo_uri")),
        expires_at=expires_at,
    )


class ClientDocumentFetcher:
    """Fetches, validates and caches client metadata documents (see the module docstring)."""

    def __init__(
        self,
        *,
        allow_private_addresses: bool = False,
        timeout: float = 5.0,
        max_bytes: int = 5 * 1024,
        cache_size: int = 1000,
        max_concurrent: int = 8,
        per_minute: int = 60,
        resolver: Resolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._allow_private = allow_private_addresses
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._cache_size = cache_size
        self._resolver = resolver or system_resolver
        self._ssl_context = ssl_context or ssl.create_default_context()
        self._clock = clock
        self._cache: OrderedDict[str, ClientDocument | _Failure] = OrderedDict()
        self._pending: dict[str, anyio.Event] = {}
        self._max_concurrent = max_concurrent
        self._per_minute = per_minute
        self._active = 0  # fetches running now
        self._starts: deque[float] = deque()  # when each fetch of the last minute started

    async def get(self, client_id: str) -> ClientDocument:
        if not is_client_document_url(client_id):
            raise ClientDocumentError("client_id is not a valid client metadata document URL")
        while True:
            entry = self._cache.get(client_id)
            if entry is not None and entry.expires_at > self._clock():
                self._cache.move_to_end(client_id)
                if isinstance(entry, _Failure):
                    raise ClientDocumentError(entry.description)
                return entry
            pending = self._pending.get(client_id)
            if pending is None:
                break
            # Another task is fetching this URL: wait, then read its outcome from the cache (or
            # fetch ourselves if it was cancelled before storing one).
            await pending.wait()
        self._admit()
        done = self._pending[client_id] = anyio.Event()
        try:
            try:
                document = await self._fetch(client_id)
            except ClientDocumentError as exc:
                self._store(client_id, _Failure(exc.description, self._clock() + FAILURE_TTL))
                raise
            self._store(client_id, document)
            return document
        finally:
            self._active -= 1
            del self._pending[client_id]
            done.set()

    def _admit(self) -> None:
        """Count a fetch about to start, or refuse it when over either limit."""
        now = self._clock()
        while self._starts and self._starts[0] <= now - 60:
            self._starts.popleft()
        if self._active >= self._max_concurrent:
            raise FetchesExhausted(
                f"rowscope is already fetching {self._active} client metadata documents; try again shortly",
                math.ceil(self._timeout),
            )
        if len(self._starts) >= self._per_minute:
            raise FetchesExhausted(
                f"rowscope fetched {len(self._starts)} client metadata documents in the last minute; "
                "try again shortly",
                math.ceil(self._starts[0] + 60 - now),
            )
        self._starts.append(now)
        self._active += 1

    async def aclose(self) -> None:
        """Forget cached documents. Connections are per fetch, so there is nothing else to close."""
        self._cache.clear()

    def _store(self, client_id: str, entry: ClientDocument | _Failure) -> None:
        self._cache[client_id] = entry
        self._cache.move_to_end(client_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _fetch(self, client_id: str) -> ClientDocument:
        try:
            with anyio.fail_after(self._timeout):
                return await self._fetch_unbounded(client_id)
        except (TimeoutError, httpcore2.TimeoutException):
            raise ClientDocumentError("timed out fetching the client metadata document") from None
        except (httpcore2.NetworkError, httpcore2.ProtocolError, httpcore2.UnsupportedProtocol):
            raise ClientDocumentError("could not fetch the client metadata document") from None

    async def _vetted_address(self, host: str, port: int) -> str:
        try:
            ipaddress.ip_address(host)
            addresses = [host]
        except ValueError:
            try:
                addresses = await self._resolver(host, port)
            except OSError:
                addresses = []
        if not addresses:
            raise ClientDocumentError("client_id host does not resolve")
        if not self._allow_private and not all(is_public_address(a) for a in addresses):
            raise ClientDocumentError("client_id host resolves to a non-public address")
        return addresses[0]

    async def _fetch_unbounded(self, client_id: str) -> ClientDocument:
        parts = urlsplit(client_id)
        host, port = (parts.hostname or "").lower(), parts.port or 443
        address = await self._vetted_address(host, port)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        url = httpcore2.URL(scheme="https", host=host, port=port, target=target)
        headers = [
            ("Host", parts.netloc),
            ("Accept", "application/json"),
            ("User-Agent", "rowscope-cimd"),
        ]
        timeouts = dict.fromkeys(("connect", "read", "write", "pool"), self._timeout)
        async with (
            httpcore2.AsyncConnectionPool(
                ssl_context=self._ssl_context,
                max_connections=1,
                network_backend=_PinnedBackend(host, port, address),
            ) as pool,
            pool.stream("GET", url, headers=headers, extensions={"timeout": timeouts}) as response,
        ):
            if 300 <= response.status < 400:
                raise ClientDocumentError("client metadata URL redirects; redirects are not followed")
            if response.status != 200:
                raise ClientDocumentError(f"client metadata URL answered HTTP {response.status}")
            response_headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers}
            media_type = response_headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type != "application/json":
                raise ClientDocumentError("client metadata document is not served as application/json")
            too_large = ClientDocumentError(
                f"client metadata document is larger than {self._max_bytes} bytes"
            )
            declared = response_headers.get("content-length", "0").strip()
            if not declared.isdigit() or int(declared) > self._max_bytes:
                raise too_large
            body = bytearray()
            async for chunk in response.aiter_stream():
                body += chunk
                if len(body) > self._max_bytes:
                    raise too_large
        cache_control = ", ".join(
            v.decode("latin-1") for k, v in response.headers if k.lower() == b"cache-control"
        )
        expires_at = self._clock() + _lifetime(cache_control)
        return parse_document(client_id, bytes(body), expires_at)
