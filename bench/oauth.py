"""Question 4: OAuth — token issuance per second, and the per-request cost of verifying a token.

* Issuance end to end: ``POST /token`` (authorization_code grant with PKCE, a public client) against
  a running rowscope (uvicorn, one worker); the codes are minted beforehand with
  ``store.issue_code``, exactly as /authorize does after consent. 1 and 8 concurrent clients.
* Issuance in the store: ``store.issue_tokens`` in its own transaction, in process.
* Verification inside the server: the verifier the HTTP app's bearer guard really holds (found in
  the app ``build_http_app`` builds, its lifespan running, the pool warm), ``verify_token`` timed
  in process. Baseline: an empty transaction on the same pool (``SELECT 1``) — the floor of any
  verification that asks the database.

    .venv/bin/python -m bench.oauth [--smoke]
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import secrets
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx2
import psycopg

from bench.common import (
    Report,
    finish,
    free_port,
    migrated_database,
    parser,
    percentile,
    pg_version,
    scratch_cluster,
)
from bench.toolcall import child_env, process, uvicorn

USER = uuid.UUID(int=(0xE1 << 120) | 1)
REDIRECT = "http://127.0.0.1:9/cb"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


async def register_client(database: Any) -> str:
    from rowscope.auth import store

    client_id = str(uuid.uuid4())
    async with database.service_transaction() as conn:
        await store.save_client(
            conn,
            {
                "client_id": client_id,
                "client_name": "rowscope bench",
                "redirect_uris": [REDIRECT],
                "grant_types": ["authorization_code", "refresh_token"],
                "token_endpoint_auth_method": "none",
                "kind": "registered",
            },
        )
    return client_id


async def codes(database: Any, client_id: str, resource: str, n: int) -> list[tuple[str, str]]:
    from rowscope.auth import store

    out = []
    async with database.service_transaction() as conn:
        for _ in range(n):
            verifier, challenge = pkce()
            code = await store.issue_code(
                conn,
                client_id=client_id,
                user_id=USER,
                redirect_uri=REDIRECT,
                scope="rowscope:read",
                resource=resource,
                code_challenge=challenge,
                ttl=dt.timedelta(minutes=10),
            )
            out.append((code, verifier))
    return out


async def token_endpoint(
    base: str, client_id: str, pairs: list[tuple[str, str]], clients: int
) -> tuple[float, list[float]]:
    queue = list(pairs)
    latencies: list[float] = []

    async def worker(http: httpx2.AsyncClient) -> None:
        while queue:
            code, verifier = queue.pop()
            started = time.perf_counter()
            response = await http.post(
                f"{base}/token",
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "code_verifier": verifier,
                    "redirect_uri": REDIRECT,
                    "client_id": client_id,
                },
            )
            latencies.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.text
            assert response.json()["access_token"].startswith("rsa_")

    async with httpx2.AsyncClient(timeout=30) as http:
        started = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return len(pairs) / elapsed, latencies


def guard_verifier(app: Any) -> Any:
    """The verifier the bearer guard in front of /mcp holds (``McpFirst`` hands /mcp to it)."""
    from rowscope.auth.resource import BearerGuard

    if not isinstance(app.mcp, BearerGuard):
        raise RuntimeError("no BearerGuard in front of /mcp")
    return app.mcp.verifier


async def in_process(url: str, report: Report, n: int) -> None:
    from rowscope.auth import store
    from rowscope.server.app import build_http_app, build_runtime
    from rowscope.server.settings import Settings

    settings = Settings(database_url=url, openai_api_key=None)
    runtime = build_runtime(settings, url)
    app = build_http_app(runtime)
    async with app.app.router.lifespan_context(app.app):
        await runtime.start()
        database = runtime.database
        client_id = await register_client(database)
        started = time.perf_counter()
        tokens = []
        for _ in range(n):
            async with database.service_transaction() as conn:
                issued = await store.issue_tokens(
                    conn,
                    client_id=client_id,
                    user_id=USER,
                    scope="rowscope:read",
                    resource=settings.resource_url,
                    access_ttl=dt.timedelta(hours=1),
                    refresh_ttl=dt.timedelta(days=1),
                )
            tokens.append(issued.access_token)
        rate = n / (time.perf_counter() - started)
        report.add("issue_tokens (store, own transaction)", rate, "tokens/s")

        verifier = guard_verifier(app)
        token = tokens[0]
        for _ in range(50):  # warm the pool (and any cache the verifier keeps)
            assert await verifier.verify_token(token) is not None
        same: list[float] = []
        for _ in range(n * 4):
            started = time.perf_counter()
            await verifier.verify_token(token)
            same.append((time.perf_counter() - started) * 1000)
        distinct: list[float] = []
        for t in tokens:
            started = time.perf_counter()
            assert await verifier.verify_token(t) is not None
            distinct.append((time.perf_counter() - started) * 1000)
        empty: list[float] = []
        for _ in range(n * 4):
            started = time.perf_counter()
            async with database.service_transaction() as conn:
                await conn.exec_driver_sql("SELECT 1")
            empty.append((time.perf_counter() - started) * 1000)
        floor = percentile(empty, 50)
        p50 = percentile(same, 50)
        report.add(
            "verify_token p50 (same token, warm)",
            p50,
            "ms",
            baseline="empty transaction (SELECT 1)",
            baseline_value=floor,
            target="< 0.3 ms",
            met=p50 < 0.3,
        )
        report.add("verify_token p99 (same token, warm)", percentile(same, 99), "ms")
        report.add(
            "verify_token p50 (a new token each time)",
            percentile(distinct, 50),
            "ms",
            baseline="empty transaction (SELECT 1)",
            baseline_value=floor,
        )
        report.add("empty transaction on the pool, p50", floor, "ms")
        report.notes.append(f"verifier measured: {type(verifier).__module__}.{type(verifier).__qualname__}")


async def over_http(url: str, report: Report, smoke: bool, logs: Path) -> None:
    from rowscope.db.engine import Database, DatabaseUrl

    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    database = Database(DatabaseUrl.parse(url), pool_size=2)
    try:
        client_id = await register_client(database)
        plan = {1: 10, 8: 24} if smoke else {1: 200, 8: 400}
        pairs = {c: await codes(database, client_id, resource, n) for c, n in plan.items()}
    finally:
        await database.dispose()
    env = child_env(DATABASE_URL=url, ROWSCOPE_PORT=str(port), ROWSCOPE_HOST="127.0.0.1")
    log = logs / "oauth-serve.log"
    with process(uvicorn("rowscope", port, 1), env, log) as proc:
        base = f"http://127.0.0.1:{port}"
        async with httpx2.AsyncClient(timeout=2) as http:
            for _ in range(300):
                if proc.poll() is not None:
                    raise RuntimeError(log.read_text()[-2000:])
                try:
                    if (await http.get(f"{base}/health")).status_code == 200:
                        break
                except httpx2.TransportError:
                    await asyncio.sleep(0.1)
        for clients, batch in pairs.items():
            rate, latencies = await token_endpoint(base, client_id, batch, clients)
            report.add(f"POST /token (authorization_code), {clients} client(s)", rate, "tokens/s")
            report.add(f"POST /token p50, {clients} client(s)", percentile(latencies, 50), "ms")


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0] if __doc__ else None)
    args = p.parse_args(argv)
    report = Report("oauth", args.smoke)
    logs = Path(tempfile.mkdtemp(prefix="rowscope-bench-oauth-", dir="/tmp"))
    with scratch_cluster("oauth") as server:
        url = migrated_database(server, "bench_oauth")
        dsn = server.libpq_dsn("bench_oauth")
        report.notes.append(pg_version(dsn))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO user_profiles (id, email) VALUES (%s, 'oauth@example.com')", (USER,))
        asyncio.run(over_http(url, report, args.smoke, logs))
        asyncio.run(in_process(url, report, 50 if args.smoke else 500))
    shutil.rmtree(logs, ignore_errors=True)
    return finish(report, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
