"""Client ID Metadata Document fetching against a real local HTTPS server (draft-ietf-oauth-client-id-
metadata-document-01, "CIMD"; MCP 2025-11-25 authorization). The server listens on 127.0.0.1 only;
its certificate names "client.test" and "localhost", which an injected resolver maps to 127.0.0.1.
Tests that refuse an address never connect anywhere: refusal happens before the first packet."""

from __future__ import annotations

import contextlib
import datetime
import http.server
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from rowscope.auth.cimd import (
    ClientDocumentError,
    ClientDocumentFetcher,
    FetchesExhausted,
    Resolver,
    is_client_document_url,
    is_public_address,
)

pytestmark = pytest.mark.anyio

DOC_PATH = "/oauth/client.json"


@dataclass
class Reply:
    status: int = 200
    body: bytes | dict[str, Any] = b""
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    content_length: bool = True
    delay: float = 0.0


@dataclass
class Pki:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_pem.decode())


@pytest.fixture(scope="module")
def pki() -> Pki:
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rowscope test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client.test")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("client.test"), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Pki(
        ca_pem=ca.public_bytes(serialization.Encoding.PEM),
        cert_pem=leaf.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


class ScriptedServer:
    """A threaded HTTPS server answering each path with a scripted Reply and logging requests."""

    def __init__(self, pki: Pki, tmp_path: Any) -> None:
        self.replies: dict[str, Reply] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.server_names: list[str | None] = []
        self.release = threading.Event()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        (tmp_path / "cert.pem").write_bytes(pki.cert_pem)
        (tmp_path / "key.pem").write_bytes(pki.key_pem)
        context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
        context.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)
        scripted = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                scripted.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                reply = scripted.replies.get(self.path, Reply(status=404, body=b"{}"))
                if reply.delay:
                    scripted.release.wait(reply.delay)
                body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.content_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # The client may have given up (size or time cap): expected in those tests.
                with contextlib.suppress(OSError):
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    def url(self, host: str = "client.test", path: str = DOC_PATH) -> str:
        return f"https://{host}:{self.port}{path}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server(pki: Pki, tmp_path: Any) -> Iterator[ScriptedServer]:
    scripted = ScriptedServer(pki, tmp_path)
    yield scripted
    scripted.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def resolver_to(*addresses: str, calls: list[str] | None = None) -> Resolver:
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in ("client.test", "localhost"):
            raise OSError("unknown host")
        return list(addresses)

    return resolve


def document(url: str, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "client_id": url,
        "client_name": "Example MCP Client",
        "redirect_uris": ["http://127.0.0.1:33418/callback", "https://app.example.com/cb"],
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not None}


def fetcher(
    pki: Pki, *, private: bool = True, addresses: tuple[str, ...] = ("127.0.0.1",), **kw: Any
) -> ClientDocumentFetcher:
    return ClientDocumentFetcher(
        allow_private_addresses=private,
        resolver=kw.pop("resolver", None) or resolver_to(*addresses),
        ssl_context=pki.client_context(),
        **kw,
    )


async def refused(f: ClientDocumentFetcher, url: str) -> ClientDocumentError:
    with anyio.fail_after(5), pytest.raises(ClientDocumentError) as info:
        await f.get(url)
    assert info.value.error == "invalid_client"
    return info.value


async def test_valid_document_is_accepted_and_parsed(pki: Pki, server: ScriptedServer) -> None:
    """Draft §4.1: the fetched document becomes the client's metadata; connection pinned (§6.5)."""
    url = server.url()
    server.replies[DOC_PATH] = Reply(
        body=document(url, scope="rows:read", client_uri="https://app.example.com", logo_uri="http://x.y/l"),
        headers={"Content-Type": "application/json; charset=utf-8", "Cache-Control": "max-age=120"},
    )
    clock, calls = Clock(), list[str]()
    f = fetcher(pki, clock=clock, resolver=resolver_to("127.0.0.1", calls=calls))
    doc = await f.get(url)
    assert doc.client_id == url and doc.client_name == "Example MCP Client"
    assert doc.redirect_uris == ("http://127.0.0.1:33418/callback", "https://app.example.com/cb")
    assert doc.token_endpoint_auth_method == "none"
    assert (doc.grant_types, doc.response_types) == (("authorization_code",), ("code",))
    assert (doc.scope, doc.client_uri, doc.logo_uri) == ("rows:read", "https://app.example.com", None)
    assert doc.expires_at == clock.now + 120
    # One DNS lookup by our resolver; "client.test" is not in real DNS, so the TCP connection went to
    # the vetted address while TLS (SNI, certificate) and Host used the hostname.
    assert calls == ["client.test"] and server.server_names == ["client.test"]
    (path, headers) = server.requests[0]
    assert path == DOC_PATH and headers["host"] == f"client.test:{server.port}"
    assert headers["accept"] == "application/json" and headers["user-agent"] == "rowscope-cimd"
    assert "cookie" not in headers and "authorization" not in headers
    await f.aclose()


async def test_document_is_cached_until_expiry_then_refetched(pki: Pki, server: ScriptedServer) -> None:
    """Draft §4.4: cache per HTTP caching; max-age below 60 s is raised to 60 s (our clamp)."""
    url = server.url()
    server.replies[DOC_PATH] = Reply(
        body=document(url), headers={"Content-Type": "application/json", "Cache-Control": "max-age=1"}
    )
    clock = Clock()
    f = fetcher(pki, clock=clock)
    first = await f.get(url)
    assert await f.get(url) is first and len(server.requests) == 1
    clock.now += 59
    assert await f.get(url) is first and len(server.requests) == 1
    clock.now += 2
    assert await f.get(url) is not first and len(server.requests) == 2


async def test_cache_is_bounded_least_recently_used_first(pki: Pki, server: ScriptedServer) -> None:
    """Our choice: the cache holds at most cache_size URLs, evicting the least recently used."""
    a, b = server.url(path="/a"), server.url(path="/b")
    server.replies["/a"], server.replies["/b"] = Reply(body=document(a)), Reply(body=document(b))
    f = fetcher(pki, cache_size=1)
    await f.get(a)
    await f.get(b)
    await f.get(a)
    assert [p for p, _ in server.requests] == ["/a", "/b", "/a"]


async def test_concurrent_gets_share_one_fetch(pki: Pki, server: ScriptedServer) -> None:
    """Our choice: simultaneous requests for one client_id cause a single fetch."""
    url = server.url()
    server.replies[DOC_PATH] = Reply(body=document(url), delay=0.2)
    f = fetcher(pki)
    results: list[Any] = []

    async def get() -> None:
        results.append(await f.get(url))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(get)
    assert len(results) == 5 and all(r is results[0] for r in results)
    assert len(server.requests) == 1


async def test_failures_are_remembered_briefly(pki: Pki, server: ScriptedServer) -> None:
    """Our choice: a failed fetch is not retried for 10 s, so we cannot be used to hammer a host."""
    url = server.url()
    clock = Clock()
    f = fetcher(pki, clock=clock)
    await refused(f, url)
    await refused(f, url)
    assert len(server.requests) == 1
    clock.now += 11
    server.replies[DOC_PATH] = Reply(body=document(url))
    assert (await f.get(url)).client_id == url and len(server.requests) == 2


async def test_a_fetch_over_the_concurrency_cap_fails_at_once_and_is_not_remembered(
    pki: Pki, server: ScriptedServer
) -> None:
    """Our choice (issue 12, fan-out): at most max_concurrent fetches run at once; another new URL
    fails at once with temporarily_unavailable and Retry-After, and is fetched normally later."""
    slow = [server.url(path=f"/slow{i}") for i in range(2)]
    for i, url in enumerate(slow):
        server.replies[f"/slow{i}"] = Reply(body=document(url), delay=10)
    other = server.url(path="/other")
    server.replies["/other"] = Reply(body=document(other))
    f = fetcher(pki, max_concurrent=2)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for url in slow:
                tg.start_soon(f.get, url)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(FetchesExhausted) as info:
                await f.get(other)
            server.release.set()
        assert (info.value.error, info.value.retry_after) == ("temporarily_unavailable", 5)
        assert "/other" not in [path for path, _ in server.requests]
        assert (await f.get(other)).client_id == other


async def test_fetches_over_the_rate_cap_fail_until_the_oldest_is_a_minute_old(
    pki: Pki, server: ScriptedServer
) -> None:
    """Our choice (issue 12, fan-out): at most per_minute fetches start in any sliding minute;
    cached documents are answered whatever the count."""
    urls = [server.url(path=f"/r{i}") for i in range(3)]
    for i, url in enumerate(urls):
        server.replies[f"/r{i}"] = Reply(body=document(url))
    clock = Clock()
    f = fetcher(pki, clock=clock, per_minute=2)
    with anyio.fail_after(5):
        await f.get(urls[0])
        clock.now += 30
        await f.get(urls[1])
        with pytest.raises(FetchesExhausted) as info:
            await f.get(urls[2])
        assert info.value.retry_after == 30
        assert (await f.get(urls[0])).client_id == urls[0]  # cached
        clock.now += 30
        assert (await f.get(urls[2])).client_id == urls[2]
    assert [path for path, _ in server.requests] == ["/r0", "/r1", "/r2"]


async def test_http_client_id_is_refused_without_a_request(pki: Pki, server: ScriptedServer) -> None:
    """Draft §3: a client identifier URL MUST use the https scheme."""
    await refused(fetcher(pki), f"http://client.test:{server.port}{DOC_PATH}")
    assert server.requests == []


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("https://client.test:{port}/", id="root-path"),
        pytest.param("https://client.test:{port}", id="no-path"),
        pytest.param("https://client.test:{port}/oauth/client.json#frag", id="fragment"),
        pytest.param("https://user:pw@client.test:{port}/oauth/client.json", id="userinfo"),
    ],
)
async def test_malformed_client_id_urls_are_refused(pki: Pki, server: ScriptedServer, url: str) -> None:
    """Draft §3: path required; no fragment; no username or password."""
    await refused(fetcher(pki), url.format(port=server.port))
    assert server.requests == []


@pytest.mark.parametrize(
    "addresses",
    [
        pytest.param(("10.0.0.7",), id="private"),
        pytest.param(("127.0.0.1",), id="loopback"),
        pytest.param(("169.254.169.254",), id="cloud-metadata"),
        pytest.param(("fe80::1",), id="link-local-v6"),
        pytest.param(("100.64.1.1",), id="cgnat"),
        pytest.param(("::ffff:127.0.0.1",), id="ipv4-mapped-loopback"),
        pytest.param(("93.184.216.34", "192.168.1.1"), id="one-of-several-private"),
    ],
)
async def test_host_resolving_to_non_public_address_is_refused_without_connecting(
    pki: Pki, server: ScriptedServer, addresses: tuple[str, ...]
) -> None:
    """Draft §6.5 / MCP SSRF guidance: never fetch from internal addresses."""
    error = await refused(fetcher(pki, private=False, addresses=addresses), server.url())
    assert "non-public" in error.description
    assert server.requests == [] and server.server_names == []


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("127.0.0.1", id="loopback"),
        pytest.param("169.254.169.254", id="metadata"),
        pytest.param("[::ffff:127.0.0.1]", id="mapped-v6"),
    ],
)
async def test_literal_ip_client_id_is_refused(pki: Pki, server: ScriptedServer, host: str) -> None:
    """Draft §6.5: literal IP hosts get the same address check (and no DNS lookup)."""
    calls: list[str] = []
    f = fetcher(pki, private=False, resolver=resolver_to("127.0.0.1", calls=calls))
    await refused(f, server.url(host=host))
    assert server.requests == [] and calls == []


async def test_unresolvable_host_is_refused(pki: Pki, server: ScriptedServer) -> None:
    """Our choice: a resolver failure is a client error, not a crash."""
    await refused(fetcher(pki), server.url(host="nowhere.test"))
    assert server.requests == []


@pytest.mark.parametrize(
    "content_length", [pytest.param(True, id="declared"), pytest.param(False, id="streamed")]
)
async def test_oversized_document_is_refused(pki: Pki, server: ScriptedServer, content_length: bool) -> None:
    """Draft §6.6: the AS SHOULD cap the response size (5 KB here); the body is counted, not trusted."""
    url = server.url()
    server.replies[DOC_PATH] = Reply(
        body=document(url, client_name="x" * 150, padding="y" * 6000), content_length=content_length
    )
    error = await refused(fetcher(pki), url)
    assert "larger than 5120 bytes" in error.description


async def test_slow_server_is_refused_in_bounded_time(pki: Pki, server: ScriptedServer) -> None:
    """Draft §6.5 / MCP SSRF guidance: fetches have a time cap."""
    url = server.url()
    server.replies[DOC_PATH] = Reply(body=document(url), delay=3)
    started = time.monotonic()
    error = await refused(fetcher(pki, timeout=0.5), url)
    assert time.monotonic() - started < 2 and "timed out" in error.description


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirect_is_refused(pki: Pki, server: ScriptedServer, status: int) -> None:
    """Draft §4: the AS MUST NOT follow redirects; only 200 is a document."""
    url = server.url()
    server.replies[DOC_PATH] = Reply(status=status, headers={"Location": "/elsewhere"})
    server.replies["/elsewhere"] = Reply(body=document(url))
    await refused(fetcher(pki), url)
    assert [p for p, _ in server.requests] == [DOC_PATH]


async def test_not_found_is_refused(pki: Pki, server: ScriptedServer) -> None:
    """Draft §4.3: anything but 200 is a discovery error."""
    await refused(fetcher(pki), server.url())


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(Reply(body=b'{"client_id": 1}', headers={"Content-Type": "text/html"}), id="html"),
        pytest.param(Reply(body=b"{not json"), id="invalid-json"),
        pytest.param(Reply(body=b'["a list"]'), id="not-an-object"),
        pytest.param(Reply(body=b'{"client_id": "a", "client_id": "b"}'), id="duplicate-keys"),
    ],
)
async def test_non_json_document_is_refused(pki: Pki, server: ScriptedServer, reply: Reply) -> None:
    """Draft §4.1: the document is a JSON object served as application/json."""
    server.replies[DOC_PATH] = reply
    await refused(fetcher(pki), server.url())


@pytest.mark.parametrize(
    ("overrides", "id_"),
    [
        pytest.param({"client_id": "https://other.example/client.json"}, "mismatch", id="client-id-mismatch"),
        pytest.param({"client_id": "DIFFERENT-CASE"}, "case", id="client-id-not-normalised"),
        pytest.param({"redirect_uris": None}, "", id="missing-redirect-uris"),
        pytest.param({"redirect_uris": []}, "", id="empty-redirect-uris"),
        pytest.param({"redirect_uris": ["http://app.example.com/cb"]}, "", id="http-non-loopback-redirect"),
        pytest.param({"redirect_uris": ["com.example.app:/cb"]}, "", id="custom-scheme-redirect"),
        pytest.param({"redirect_uris": ["https://a.example/cb#x"]}, "", id="redirect-with-fragment"),
        pytest.param({"client_secret": "s3cret"}, "", id="client-secret"),
        pytest.param({"client_secret_expires_at": 0}, "", id="client-secret-expiry"),
        pytest.param({"token_endpoint_auth_method": "private_key_jwt"}, "", id="private-key-jwt"),
        pytest.param({"token_endpoint_auth_method": "client_secret_basic"}, "", id="client-secret-basic"),
        pytest.param({"grant_types": ["client_credentials"]}, "", id="unsupported-grant"),
        pytest.param({"response_types": ["token"]}, "", id="implicit-response-type"),
        pytest.param({"client_name": None}, "", id="missing-client-name"),
        pytest.param({"client_name": "x" * 201}, "", id="long-client-name"),
    ],
)
async def test_invalid_document_is_refused(
    pki: Pki, server: ScriptedServer, overrides: dict[str, Any], id_: str
) -> None:
    """Draft §4.1 (client_id exact match, required fields, no secrets) and our public-client policy."""
    url = server.url()
    if id_ == "case":
        overrides = {"client_id": url.replace("client.test", "CLIENT.test")}
    server.replies[DOC_PATH] = Reply(body=document(url, **overrides))
    await refused(fetcher(pki), url)


@pytest.mark.parametrize(
    ("client_id", "expected"),
    [
        pytest.param("https://app.example.com/oauth/client.json", True, id="typical"),
        pytest.param("https://app.example.com:8443/c?v=1", True, id="port-and-query"),
        pytest.param("https://app.example.com/a/.well/b", True, id="dot-in-name-is-fine"),
        pytest.param("http://app.example.com/client.json", False, id="http"),
        pytest.param("HTTPS://app.example.com/client.json", False, id="uppercase-scheme"),
        pytest.param("https://app.example.com", False, id="no-path"),
        pytest.param("https://app.example.com/", False, id="root-path"),
        pytest.param("https://app.example.com/c#", False, id="empty-fragment"),
        pytest.param("https://app.example.com/c#x", False, id="fragment"),
        pytest.param("https://u@app.example.com/c", False, id="username"),
        pytest.param("https://u:p@app.example.com/c", False, id="password"),
        pytest.param("https://app.example.com/a/../c", False, id="dot-dot"),
        pytest.param("https://app.example.com/a/./c", False, id="dot"),
        pytest.param("https://app.example.com/a/%2e%2E/c", False, id="encoded-dot-dot"),
        pytest.param("https:///c", False, id="no-host"),
        pytest.param("https://app.example.com:0/c", False, id="port-zero"),
        pytest.param("https://app.example.com:99999/c", False, id="bad-port"),
        pytest.param("https://app.example.com/c d", False, id="space"),
        pytest.param("https://app.example.com/c\n", False, id="newline"),
        pytest.param("https://app.example.com/" + "a" * 2030, False, id="too-long"),
        pytest.param("client-123", False, id="opaque-id"),
        pytest.param("", False, id="empty"),
    ],
)
def test_is_client_document_url(client_id: str, expected: bool) -> None:
    """Draft §3 client identifier URL rules; the 2048-character cap is our choice."""
    assert is_client_document_url(client_id) is expected


@pytest.mark.parametrize(
    ("address", "public"),
    [
        pytest.param("93.184.216.34", True, id="v4-public"),
        pytest.param("2606:4700::1111", True, id="v6-public"),
        pytest.param("224.0.0.1", False, id="multicast"),
        pytest.param("0.0.0.0", False, id="unspecified"),  # noqa: S104 - not a bind
        pytest.param("240.0.0.1", False, id="reserved"),
        pytest.param("2002:7f00:1::", False, id="6to4-loopback"),
        pytest.param("64:ff9b::a00:1", False, id="nat64-private"),
        pytest.param("fc00::1", False, id="unique-local"),
    ],
)
def test_public_address_check(address: str, public: bool) -> None:
    """Draft §6.5: only globally routable destinations, including IPv4 hidden inside IPv6."""
    assert is_public_address(address) is public
