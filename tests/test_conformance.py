"""The official MCP conformance suite (npm ``@modelcontextprotocol/conformance``) against
``rowscope serve``, every server scenario of the pinned release, with the ones that do not apply
to a tools-only server listed, each with its reason, in ``tests/conformance-baseline.yml``.

The runner's client has no way to send credentials, and rowscope refuses unauthenticated calls.
So it talks to rowscope through a loopback reverse proxy that stands in for a deployment's TLS
proxy: it forwards every request unchanged, Host and Origin included, and adds only
``Authorization: Bearer <an API key>``. rowscope runs with ``ROWSCOPE_PUBLIC_URL`` set to the
proxy, as it would behind a real one, so its DNS-rebinding check is what answers the suite's
``Host: evil.example.com`` probe (the proxy never produces a 4xx itself)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.servers import free_port, serve

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CONFORMANCE_VERSION = "0.1.16"
CONFORMANCE_DIR = REPO / ".cache" / "conformance"
CONFORMANCE_PACKAGE = "@modelcontextprotocol/conformance"
# conformance 0.1.16 needs Node >= 22 (on 20 it dies importing `globSync` from "fs"). Where the
# system's node is older (Debian 12 ships 18, this machine has 20) the npm registry's `node`
# package supplies one: it installs the official binary for this platform under node_modules.
NODE_VERSION = "22.23.3"
NODE_DIR = REPO / ".cache" / "node22"
BASELINE = Path(__file__).with_name("conformance-baseline.yml")
# The scenarios that apply to any tools-only server; every one of their checks must pass.
APPLICABLE = {"server-initialize", "ping", "tools-list", "dns-rebinding-protection"}
# Scenarios that pass but prove little: the fixture tool they call does not exist and the SDK
# answers with an isError text result (which is all they check), or they list nothing.
VACUOUS = {"tools-call-simple-text", "tools-call-error", "resources-list", "prompts-list"}
RESULTS_DIR = re.compile(r"^server-(?P<scenario>[a-z0-9-]+?)-\d{4}-\d{2}-\d{2}T[\d-]+Z$")
BASELINE_ENTRY = re.compile(r"^  - (?P<scenario>[a-z0-9-]+)$", re.MULTILINE)
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


def npm_install(prefix: Path, spec: str) -> None:
    if shutil.which("npm") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must provide Node.js and npm for the conformance suite (.ci/run installs them)")
        pytest.skip("npm is not installed; the conformance suite needs it")
    prefix.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--loglevel=error", spec],
        check=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


def installed_version(prefix: Path, package: str) -> str | None:
    manifest = prefix / "node_modules" / package / "package.json"
    return str(json.loads(manifest.read_text())["version"]) if manifest.exists() else None


@pytest.fixture(scope="session")
def node22() -> str:
    """A Node.js >= 22: the system's if new enough, else node@22 from npm, once, in .cache/node22."""
    system = shutil.which("node")
    if system:
        major = subprocess.run([system, "--version"], capture_output=True, text=True, check=True).stdout
        if int(major.strip().lstrip("v").split(".")[0]) >= 22:
            return system
    if installed_version(NODE_DIR, "node") != NODE_VERSION:
        npm_install(NODE_DIR, f"node@{NODE_VERSION}")
    binary = NODE_DIR / "node_modules" / ".bin" / "node"
    assert binary.exists(), f"node@{NODE_VERSION} installed no node binary"
    return str(binary)


@pytest.fixture(scope="session")
def conformance() -> Path:
    """The pinned conformance runner, installed once into .cache/conformance."""
    if installed_version(CONFORMANCE_DIR, CONFORMANCE_PACKAGE) != CONFORMANCE_VERSION:
        npm_install(CONFORMANCE_DIR, f"{CONFORMANCE_PACKAGE}@{CONFORMANCE_VERSION}")
    entry = CONFORMANCE_DIR / "node_modules" / CONFORMANCE_PACKAGE / "dist" / "index.js"
    assert entry.exists(), f"{CONFORMANCE_PACKAGE}@{CONFORMANCE_VERSION} has no dist/index.js"
    return entry


@pytest.fixture(scope="module")
def api_key(make_api_key: Callable[..., str]) -> str:
    """Alice's API key (``accounts.create_key``), deleted at the end of the session."""
    return make_api_key("alice@example.com", "test_conformance")


def proxy_app(upstream: str, token: str) -> Starlette:
    """Forwards every request to ``upstream`` as it came (method, path, query, Host, Origin, body),
    adding only the bearer token; streams the answer back (SSE included)."""
    http: list[httpx2.AsyncClient] = []

    async def forward(request: Request) -> Response:
        headers = [(k, v) for k, v in request.headers.items() if k not in HOP_BY_HOP | {"authorization"}]
        outgoing = http[0].build_request(
            request.method,
            upstream + request.url.path,
            params=request.url.query,
            headers=[*headers, ("authorization", f"Bearer {token}")],
            content=await request.body(),
        )
        answer = await http[0].send(outgoing, stream=True)
        return StreamingResponse(
            answer.aiter_raw(),
            status_code=answer.status_code,
            headers={k: v for k, v in answer.headers.items() if k not in HOP_BY_HOP},
            background=BackgroundTask(answer.aclose),
        )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with httpx2.AsyncClient(timeout=60) as client:
            http.append(client)
            yield

    methods = ["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD"]
    return Starlette(
        routes=[Route("/{path:path}", forward, methods=methods)],
        lifespan=lifespan,
    )


@pytest.fixture(scope="module")
def proxied_url(database_url: str, api_key: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """rowscope behind the token-adding proxy; yields the proxy's base URL."""
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    with serve(database_url, tmp_path_factory.mktemp("conformance"), ROWSCOPE_PUBLIC_URL=public) as upstream:
        config = uvicorn.Config(
            proxy_app(upstream, api_key),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            server_header=False,  # rowscope's own Date and Server headers pass through
            date_header=False,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 15
            while not server.started:
                assert thread.is_alive() and time.monotonic() < deadline, "the proxy did not start"
                thread.join(timeout=0.05)
            yield public
        finally:
            server.should_exit = True
            thread.join(timeout=15)


def scenario_results(output: Path) -> dict[str, list[dict[str, Any]]]:
    """``-o DIR`` leaves ``DIR/server-<scenario>-<timestamp>/checks.json`` per scenario."""
    found: dict[str, list[dict[str, Any]]] = {}
    for checks in sorted(output.glob("server-*/checks.json")):
        named = RESULTS_DIR.match(checks.parent.name)
        assert named, checks
        found[named["scenario"]] = json.loads(checks.read_text())
    return found


def baseline() -> dict[str, str]:
    """The baseline's scenarios, each with the comment lines above it (its reason)."""
    text = BASELINE.read_text()
    reasons: dict[str, str] = {}
    for entry in BASELINE_ENTRY.finditer(text):
        above = text[: entry.start()].rstrip("\n").splitlines()
        comments: list[str] = []
        while above and above[-1].startswith("  #"):
            comments.insert(0, above.pop().removeprefix("  #").strip())
        reasons[entry["scenario"]] = " ".join(comments)
    return reasons


def test_every_baseline_entry_gives_its_reason() -> None:
    """Our choice: a conformance scenario is only excused with a written reason."""
    reasons = baseline()
    assert len(reasons) == BASELINE.read_text().count("\n  - ")
    assert [s for s, why in reasons.items() if not why] == []
    assert not (APPLICABLE | VACUOUS) & set(reasons)


def test_rowscope_passes_every_applicable_conformance_scenario(
    node22: str, conformance: Path, proxied_url: str, tmp_path: Path
) -> None:
    """Spec-required (MCP 2025-11-25 lifecycle, ping, tools, Streamable HTTP incl. DNS-rebinding
    protection), as the official conformance suite checks it; the rest is the baseline's."""
    output = tmp_path / "results"
    done = subprocess.run(
        [
            node22,
            str(conformance),
            "server",
            "--url",
            f"{proxied_url}/mcp",
            "--suite",
            "all",
            "--expected-failures",
            str(BASELINE),
            "-o",
            str(output),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    results = scenario_results(output)
    # Every scenario of the suite ran and is accounted for: passing, or excused in the baseline.
    assert set(results) == APPLICABLE | VACUOUS | set(baseline())
    statuses = {s: sorted({c["status"] for c in checks}) for s, checks in results.items()}
    assert {s: statuses[s] for s in APPLICABLE | VACUOUS if statuses[s] != ["SUCCESS"]} == {}
    # The stateless server's SSE scenarios warn (no session id); they never fail outright.
    assert statuses["server-sse-multiple-streams"] == ["WARNING"]
    # The refusal came from rowscope itself (Starlette's 421 Misdirected Request), not the proxy.
    rebinding = {c["id"]: c for c in results["dns-rebinding-protection"]}
    assert rebinding["localhost-host-rebinding-rejected"]["details"]["statusCode"] == 421
    assert rebinding["localhost-host-valid-accepted"]["details"]["statusCode"] == 200
