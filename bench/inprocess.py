"""Question 1, in process: the CPU one tool call costs each app, with no HTTP and no load generator.

The ASGI apps of ``bench/toolcall.py`` — the floor (a bare MCP SDK server with one constant tool)
and rowscope (its whole HTTP app: bearer guard, direct path, ``query_records`` on PortfolioItem, 20
rows) — are started in this process (their lifespans run) and called directly, one request after
another, with the 2025-11-25 headers unless said otherwise; rowscope with a real access token. The
figure is this process's CPU time per call (``time.process_time``), which includes psycopg's client
side but not PostgreSQL's; wall time is reported next to it. Rowscope is measured four ways: the same request
each time (its read shape kept, ``Database.read_shaped``); a new filter value each time (the
filter's form is kept, so its SQL is reused with the new value bound); a new filter form each time,
from more forms than any cache holds (the statement planned, built and compiled, and parsed by
PostgreSQL, every call: the worst case); and the same request on the 2026-07-28 wire (the revision
the SDK's client speaks by default), against the floor on that wire. All run in interleaved rounds;
the median round stands.

This is where the tool-call path is profiled: ``--profile FILE`` writes a pyinstrument profile of
rowscope's calls (HTML, or text when FILE ends in ``.txt``).

    .venv/bin/python -m bench.inprocess [--smoke] [--profile /tmp/call.html] [--profile-wire 2026-07-28]
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import Report, finish, free_port, migrated_database, parser, pg_version, scratch_cluster
from bench.toolcall import HEADERS, MODERN, QUERY, mint_token, modern_call, new_value_query, rpc, seed

ASGIApp = Callable[..., Any]
FORM_FIELDS = ("title", "description", "url")
FORMS = 3**6  # 729 filter forms (> SHAPE_CACHE_SIZE and COMPILED_CACHE_SIZE in rowscope/db/engine.py)


async def start(app: ASGIApp) -> Callable[[], Any]:
    """Run the app's lifespan startup; returns the coroutine function that shuts it down."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, outbox.put)
    )
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"lifespan failed: {started}")

    async def stop() -> None:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task

    return stop


async def call(app: ASGIApp, port: int, body: bytes, headers: dict[str, str]) -> bytes:
    """One POST /mcp through the app, as uvicorn would hand it over; the response body."""
    fields = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    fields += [(b"host", f"127.0.0.1:{port}".encode()), (b"content-length", str(len(body)).encode())]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/mcp", "raw_path": b"/mcp", "query_string": b"", "root_path": "",
        "headers": fields, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", port), "state": {},
    }  # fmt: skip
    chunks: list[bytes] = []
    status = 0
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    payload = b"".join(chunks)
    if status != 200 or b'"isError":true' in payload:
        raise RuntimeError(f"call failed ({status}): {payload[:300]!r}")
    return payload


Subject = tuple[ASGIApp, Callable[[], bytes], dict[str, str]]


async def measure(
    port: int, subjects: dict[str, Subject], calls: int, rounds: int
) -> dict[str, tuple[float, float]]:
    """Median over ``rounds`` of each subject's (CPU µs, wall µs) per call, the subjects in turn."""
    for app, body, headers in subjects.values():
        for _ in range(max(calls // 5, 20)):  # warm: pools, caches, the first plans
            await call(app, port, body(), headers)
    taken: dict[str, list[tuple[float, float]]] = {name: [] for name in subjects}
    for _ in range(rounds):
        for name, (app, body, headers) in subjects.items():
            bodies = [body() for _ in range(calls)]  # made before the clock starts
            cpu, wall = time.process_time(), time.perf_counter()
            for each in bodies:
                await call(app, port, each, headers)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            taken[name].append((cpu / calls * 1e6, wall / calls * 1e6))
    return {
        name: (statistics.median(c for c, _ in runs), statistics.median(w for _, w in runs))
        for name, runs in taken.items()
    }


async def run(
    report: Report, url: str, smoke: bool, profile: Path | None, profile_modern: bool
) -> str | None:
    """Measure into ``report``; the profile's text when ``profile`` is given."""
    from bench import apps
    from rowscope.server.app import build_http_app, build_runtime
    from rowscope.server.settings import Settings

    port = free_port()
    token = await mint_token(url, f"http://127.0.0.1:{port}/mcp")
    settings = Settings(
        database_url=url, port=port, host="127.0.0.1", openai_api_key=None, direct_tool_calls=True
    )
    rowscope = build_http_app(build_runtime(settings, url))
    floor = apps.floor()
    auth = HEADERS | {"Authorization": f"Bearer {token}"}
    same = rpc(*QUERY)

    forms = itertools.count()

    def new_form() -> bytes:
        # FORMS filters of six conditions each, the fields in a different order, taken in turn: more
        # forms than any of the caches hold (read shapes, compiled SQL, prepared statements), so each
        # call plans, builds and compiles its statement and PostgreSQL parses it.
        n = next(forms) % FORMS
        fields = [FORM_FIELDS[(n // 3**i) % 3] for i in range(6)]
        where = {"AND": [{f: {"not": uuid.uuid4().hex}} for f in fields]}
        return rpc("query_records", {"model": "PortfolioItem", "where": where})

    # The same calls on the 2026-07-28 wire, the revision the SDK's client speaks by default.
    modern, modern_headers = modern_call(*QUERY, auth)
    floor_modern, floor_modern_headers = modern_call("constant", {}, HEADERS)
    subjects: dict[str, Subject] = {
        "floor": (floor, lambda: rpc("constant", {}), HEADERS),
        "rowscope": (rowscope, lambda: same, auth),
        "rowscope, a new filter value every call": (rowscope, new_value_query, auth),
        "rowscope, a new filter form every call": (rowscope, new_form, auth),
        f"floor, {MODERN} wire": (floor, lambda: floor_modern, floor_modern_headers),
        f"rowscope, {MODERN} wire": (rowscope, lambda: modern, modern_headers),
    }
    stops = [await start(floor), await start(rowscope)]
    try:
        calls, rounds = (50, 1) if smoke else (500, 9)
        figures = await measure(port, subjects, calls, rounds)
        profiled = None
        if profile is not None:
            body, headers = (modern, modern_headers) if profile_modern else (same, auth)
            profiled = await write_profile(profile, rowscope, port, body, headers, 50 if smoke else 3000)
    finally:
        for stop in stops:
            await stop()
    floors = {wire: figures.pop(name) for wire, name in (("", "floor"), (MODERN, f"floor, {MODERN} wire"))}
    for wire, (cpu, wall) in floors.items():
        name = f"floor, {wire} wire" if wire else "floor"
        report.add(f"{name}: CPU per call", cpu, "µs")
        report.add(f"{name}: wall per call", wall, "µs")
    for name, (cpu, wall) in figures.items():
        wire = MODERN if MODERN in name else ""  # each wire's rows against the floor on the same wire
        base = f"floor, {wire} wire" if wire else "floor"
        floor_cpu, floor_wall = floors[wire]
        report.add(f"{name}: CPU per call", cpu, "µs", baseline=base, baseline_value=floor_cpu)
        report.add(f"{name}: wall per call", wall, "µs", baseline=base, baseline_value=floor_wall)
    report.notes.append(
        f"{rounds} interleaved round(s) of {calls} sequential calls per app, medians; CPU is this "
        "process's (psycopg's client side included, PostgreSQL's not)"
    )
    return profiled


async def write_profile(
    path: Path, app: ASGIApp, port: int, body: bytes, headers: dict[str, str], calls: int
) -> str:
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0002, async_mode="disabled")
    profiler.start()
    for _ in range(calls):
        await call(app, port, body, headers)
    profiler.stop()
    return profiler.output_text(unicode=True) if path.suffix == ".txt" else profiler.output_html()


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--profile", type=Path, help="write a pyinstrument profile of rowscope's calls here")
    p.add_argument(
        "--profile-wire",
        choices=("2025-11-25", MODERN),
        default="2025-11-25",
        help="the wire of the profiled calls",
    )
    args = p.parse_args(argv)
    report = Report("inprocess", args.smoke)
    with scratch_cluster("inprocess") as server:
        url = migrated_database(server, "bench_inprocess")
        dsn = server.libpq_dsn("bench_inprocess")
        report.notes.append(pg_version(dsn))
        seed(dsn)
        import uvloop  # what uvicorn runs rowscope on

        profiled = uvloop.run(run(report, url, args.smoke, args.profile, args.profile_wire == MODERN))
    if args.profile is not None and profiled is not None:
        args.profile.write_text(profiled)
        print(f"profile: {args.profile}")
    return finish(report, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
