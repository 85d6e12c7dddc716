"""Issue 12, item 1: one user's search while three other users add documents, on the offline model.

A real ``rowscope serve`` (one worker, the offline embedder) on a scratch embedded PostgreSQL; four
users, each with an API key and a spark of their own. The searcher calls ``search_knowledge`` over
Streamable HTTP, one call after another: first alone, then while three other users each add 64-chunk
documents (a new document as soon as the last one returned). Figures: the search's p50/p95 alone
and under the adds, and the adds' chunks per second from the first add's start to the last one's
end (what the fairness must not cost).

With ``--source DIR`` (repeatable: a directory holding another ``rowscope`` package and its
migrations, e.g. the previous commit's: ``git archive HEAD rowscope migrations | tar -x -C DIR``)
that code is served and measured first, in the same run, on a database of its own that it migrated.

    .venv/bin/python -m bench.fairness [--smoke] [--source DIR ...]
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio

from bench.common import Report, finish, free_port, parser, percentile, scratch_cluster
from bench.ingestion import document
from bench.loadgen import HttpConnection, http_request
from bench.toolcall import HEADERS, child_env, ok, process, rpc, tail, wait_ready

ROWSCOPE = str(Path(sys.executable).with_name("rowscope"))
ADDERS = 3
CHUNKS = 64  # per add: one embedding batch (embedding_batch_size's default)
# 64 chunks of 1,000 characters overlapping by 200 (rowscope/embeddings/chunking.py).
DOCUMENT_CHARS = (CHUNKS - 1) * 800 + 1000
MIN_ADDS = 2  # per adding user, however quick the searches were


async def setup(url: str, users: int) -> list[tuple[str, uuid.UUID]]:
    """``users`` users, each with an API key and one spark holding a little knowledge."""
    from sqlalchemy import insert

    from rowscope.db import accounts
    from rowscope.db.engine import Database, DatabaseUrl
    from rowscope.db.models import Spark

    database = Database(DatabaseUrl.parse(url), pool_size=1)
    made: list[tuple[str, uuid.UUID]] = []
    try:
        async with database.service_transaction() as conn:
            for n in range(users):
                email = f"fair{n}@example.com"
                user = await accounts.add_user(conn, email)
                spark = uuid.uuid4()
                await conn.execute(insert(Spark).values(id=spark, user_id=user, name=f"spark {n}"))
                _, key = await accounts.create_key(conn, email, "bench")
                made.append((key, spark))
    finally:
        await database.dispose()
    return made


class Caller:
    """One user's keep-alive connection to the server, calling tools."""

    def __init__(self, port: int, key: str) -> None:
        self.port, self.headers = port, HEADERS | {"Authorization": f"Bearer {key}"}
        self.conn: HttpConnection | None = None

    async def call(self, name: str, arguments: dict[str, Any]) -> tuple[float, bytes]:
        if self.conn is None:
            self.conn = await HttpConnection.open(self.port)
        started = time.perf_counter()
        status, payload = await self.conn.call(
            http_request(self.port, "/mcp", rpc(name, arguments), self.headers)
        )
        elapsed = time.perf_counter() - started
        if not ok(status, payload):
            raise RuntimeError(f"{name} answered {status}: {payload[:300]!r}")
        return elapsed, payload

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


async def searches(caller: Caller, count: int, deadline: float) -> list[float]:
    out: list[float] = []
    for i in range(count):
        if time.monotonic() > deadline:
            break
        elapsed, _ = await caller.call("search_knowledge", {"query": f"what did I note about brewing, {i}?"})
        out.append(elapsed)
    return out


async def measure(
    port: int, keys: list[tuple[str, uuid.UUID]], count: int, min_adds: int, tag: str
) -> dict[str, Any]:
    """Search latencies alone and under ``ADDERS`` users' adds; the adds' chunks and seconds."""
    (search_key, _), *adder_keys = keys
    searcher = Caller(port, search_key)
    adders = [Caller(port, key) for key, _ in adder_keys]
    try:
        await searches(searcher, 3, time.monotonic() + 60)  # warm: the model is loaded, pools open
        alone = await searches(searcher, count, time.monotonic() + 120)
        stop = anyio.Event()
        adds: list[tuple[float, float, int]] = []  # (start, end, chunks added)
        started_adding = anyio.Event()
        running = 0

        async def add_loop(n: int, caller: Caller, spark: uuid.UUID) -> None:
            nonlocal running
            done = 0
            # Until the searches are over and this user has added min_adds documents.
            while not (stop.is_set() and done >= min_adds):
                text = document(DOCUMENT_CHARS, seed=hash((tag, n, done)) & 0xFFFF_FFFF)
                running += 1
                if running == ADDERS:
                    started_adding.set()
                began = time.perf_counter()
                _, payload = await caller.call(
                    "add_training_content", {"spark_id": str(spark), "content": text}
                )
                running -= 1
                body = json.loads(payload[payload.index(b"{") :].split(b"\n")[0])
                adds.append((began, time.perf_counter(), body["result"]["structuredContent"]["chunks_added"]))
                done += 1

        loaded: list[float] = []
        async with anyio.create_task_group() as tasks:
            for n, (caller, (_, spark)) in enumerate(zip(adders, adder_keys, strict=True)):
                tasks.start_soon(add_loop, n, caller, spark)
            await started_adding.wait()
            await anyio.sleep(0.5)  # the adds are embedding
            loaded = await searches(searcher, count, time.monotonic() + 300)
            stop.set()
        return {"alone": alone, "loaded": loaded, "adds": adds}
    finally:
        for c in [searcher, *adders]:
            await c.close()


async def run(
    url: str, keys: list[tuple[str, uuid.UUID]], source: Path | None, count: int, min_adds: int, log: Path
) -> Any:
    port = free_port()
    # Long enough for three users' 64-chunk batches sharing the model on a busy machine: what is
    # measured is the search's wait, not whether the adds fit the default bound.
    env = child_env(DATABASE_URL=url, ROWSCOPE_EMBEDDING_TIMEOUT="300")
    if source is not None:
        env["PYTHONPATH"] = str(source)
    argv = [ROWSCOPE, "serve", "--port", str(port)]
    with process(argv, env, log) as proc:
        body = rpc("list_sparks", {})
        await wait_ready(port, body, HEADERS | {"Authorization": f"Bearer {keys[0][0]}"}, proc, log)
        try:
            return await measure(port, keys, count, min_adds, str(source))
        except Exception:
            print(tail(log))
            raise


def add_figures(report: Report, label: str, result: dict[str, Any]) -> None:
    alone, loaded = result["alone"], result["loaded"]
    p50, p95 = percentile(alone, 50), percentile(alone, 95)
    report.add(f"{label}: search p50 alone", p50, "s")
    report.add(f"{label}: search p95 alone", p95, "s")
    report.add(
        f"{label}: search p50, {ADDERS} users adding",
        percentile(loaded, 50),
        "s",
        baseline="alone",
        baseline_value=p50,
    )
    report.add(
        f"{label}: search p95, {ADDERS} users adding",
        percentile(loaded, 95),
        "s",
        baseline="alone",
        baseline_value=p95,
    )
    adds = result["adds"]
    span = max(end for _, end, _ in adds) - min(start for start, _, _ in adds)
    report.add(
        f"{label}: the adds' chunks/s, all {ADDERS} users together",
        sum(chunks for _, _, chunks in adds) / span,
        "chunks/s",
        note=f"{len(adds)} adds of {CHUNKS} chunks",
    )
    report.add(f"{label}: searches under the adds", float(len(loaded)), "calls")


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--source",
        type=Path,
        action="append",
        default=[],
        help="a directory with another rowscope package, measured first (may be repeated)",
    )
    args = p.parse_args(argv)
    report = Report("fairness", args.smoke)
    count, min_adds = (5, 1) if args.smoke else (40, MIN_ADDS)
    runs: list[tuple[str, Path | None]] = [(str(s), s.resolve()) for s in args.source]
    runs.append(("this tree", None))
    with scratch_cluster("fairness") as server:
        logs = Path(server.pgdata).parent
        for n, (label, source) in enumerate(runs):
            # Each served tree on a database of its own, migrated by that tree's `rowscope migrate`.
            url = server.url(f"rowscope_{n}")
            env = child_env(DATABASE_URL=url) | ({"PYTHONPATH": str(source)} if source else {})
            subprocess.run([ROWSCOPE, "migrate"], env=env, check=True, capture_output=True, timeout=300)  # noqa: S603
            keys = asyncio.run(setup(url, 1 + ADDERS))
            result = asyncio.run(run(url, keys, source, count, min_adds, logs / f"serve-{n}.log"))
            add_figures(report, label, result)
    report.notes.append(
        f"one searcher, sequential search_knowledge calls; {ADDERS} other users each adding "
        f"{CHUNKS}-chunk documents back to back; one rowscope serve worker, offline embedder"
    )
    return finish(report, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
