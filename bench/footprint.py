"""Question 5: start and footprint — ``rowscope serve`` to its first answered request on an
initialised embedded database, and resident memory at rest and under load.

The data directory is initialised once (``rowscope migrate``, a user, an API key — each command a
process of its own, so the embedded PostgreSQL is stopped in between). Then, per repetition, a new
``rowscope serve`` process starts the embedded PostgreSQL itself; measured from spawning it to the
first ``GET /health`` answered and to the first ``tools/call`` of ``query_records`` answered (with
the API key as bearer). Memory: rowscope's RSS, and the cluster's PSS (shared buffers counted
once), at rest and at the peak of 32 concurrent clients. The baseline for start is the same
interpreter doing nothing (``python -c pass``): the part no server can avoid.

    .venv/bin/python -m bench.footprint [--smoke]
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from bench.common import Report, finish, free_port, parser, percentile
from bench.loadgen import HttpConnection, drive, http_caller, http_request
from bench.toolcall import HEADERS, child_env, ok, rpc

ROWSCOPE = str(Path(sys.executable).with_name("rowscope"))


def cli(data_dir: Path, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(  # noqa: S603
        [ROWSCOPE, *args],
        env=child_env(ROWSCOPE_DATA_DIR=str(data_dir)),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


def cluster_pss(pgdata: Path) -> int:
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        root = psutil.Process(pid)
    except (FileNotFoundError, psutil.NoSuchProcess, ValueError):
        return 0
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except psutil.Error:
            continue
    return total


class Sampler:
    def __init__(self, proc: psutil.Process, pgdata: Path) -> None:
        self.proc, self.pgdata = proc, pgdata
        self.rss = 0
        self.pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.rss = max(self.rss, self.proc.memory_info().rss)
            self.pss = max(self.pss, cluster_pss(self.pgdata))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


async def first_answers(
    port: int, proc: subprocess.Popen[bytes], body: bytes, headers: dict[str, str]
) -> tuple[float, float]:
    """Seconds (from now) to the first /health answered and to the first tools/call answered."""
    started = time.perf_counter()
    health = None
    deadline = started + 60
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rowscope serve exited with {proc.returncode}")
        try:
            conn = await HttpConnection.open(port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        try:
            if health is None:
                request = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
                status, _ = await conn.call(request)
                if status == 200:
                    health = time.perf_counter() - started
            status, payload = await conn.call(http_request(port, "/mcp", body, headers))
            if ok(status, payload):
                return health or time.perf_counter() - started, time.perf_counter() - started
            raise RuntimeError(f"first call answered {status}: {payload[:300]!r}")
        finally:
            await conn.close()
    raise RuntimeError("rowscope serve did not answer within 60 s")


async def measure(
    data_dir: Path, key: str, repetitions: int, load_requests: int, bare: float, report: Report
) -> None:
    body = rpc("query_records", {"model": "PortfolioItem"})
    headers = HEADERS | {"Authorization": f"Bearer {key}"}
    to_health: list[float] = []
    to_call: list[float] = []
    pgdata = data_dir / "pgdata"
    for rep in range(repetitions):
        port = free_port()
        log = data_dir / f"serve-{rep}.log"
        with log.open("wb") as out:
            spawned = time.perf_counter()
            proc = subprocess.Popen(  # noqa: S603, ASYNC220  (the spawn is what is timed)
                [ROWSCOPE, "serve", "--port", str(port)],
                env=child_env(ROWSCOPE_DATA_DIR=str(data_dir)),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            health, call = await first_answers(port, proc, body, headers)
            offset = time.perf_counter() - spawned - call  # time spent before polling began
            to_health.append(health + offset)
            to_call.append(call + offset)
            if rep == repetitions - 1:
                ps = psutil.Process(proc.pid)
                await asyncio.sleep(1.0)
                rest_rss, rest_pss = ps.memory_info().rss, cluster_pss(pgdata)
                with Sampler(ps, pgdata) as sampler:
                    run = await drive(http_caller(port, body, headers, ok), 32, load_requests, 2, 20.0)
                report.add("rowscope RSS at rest", rest_rss / 2**20, "MiB")
                report.add("rowscope RSS peak, 32 clients", sampler.rss / 2**20, "MiB")
                report.add("embedded PostgreSQL PSS at rest", rest_pss / 2**20, "MiB")
                report.add("embedded PostgreSQL PSS peak, 32 clients", sampler.pss / 2**20, "MiB")
                report.add("calls during the load", float(run.requests), "calls", note=f"{run.errors} errors")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    med_call = percentile(to_call, 50)
    report.add("serve -> first /health answered (median)", percentile(to_health, 50), "s")
    report.add(
        "serve -> first tools/call answered (median)",
        med_call,
        "s",
        baseline="python -c pass",
        baseline_value=bare,
        target="<= 2 s",
        met=med_call <= 2.0,
    )
    report.add("serve -> first tools/call answered (max)", max(to_call), "s")
    report.notes.append(f"{repetitions} start(s); each starts the embedded PostgreSQL as well")


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0] if __doc__ else None)
    args = p.parse_args(argv)
    report = Report("footprint", args.smoke)
    data_dir = Path(tempfile.mkdtemp(prefix="rowscope-bench-footprint-", dir="/tmp"))
    try:
        cli(data_dir, "migrate")
        cli(data_dir, "users", "add", "footprint@example.com")
        key = cli(data_dir, "keys", "create", "--user", "footprint@example.com").strip().splitlines()[-1]
        seed_items(data_dir)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare = time.perf_counter() - started
        asyncio.run(measure(data_dir, key, 1 if args.smoke else 5, 64 if args.smoke else 2000, bare, report))
    finally:
        stop_leftover(data_dir / "pgdata")
        shutil.rmtree(data_dir, ignore_errors=True)
    return finish(report, args.out)


def seed_items(data_dir: Path) -> None:
    """Twenty portfolio items for the user, so the first call returns a full page."""
    import psycopg

    from bench.common import scratch_cluster

    with (
        scratch_cluster("unused", keep=data_dir) as server,
        psycopg.connect(server.libpq_dsn("rowscope")) as conn,
    ):
        conn.execute(
            "INSERT INTO portfolio_items (user_id, kind, title) "
            "SELECT id, 'link', 'Item ' || n FROM user_profiles, generate_series(1, 20) AS n"
        )


def stop_leftover(pgdata: Any) -> None:
    """A cluster a failed run left running (normally the last rowscope process stopped it)."""
    if (pgdata / "postmaster.pid").exists():
        from bench.common import scratch_cluster

        with scratch_cluster("unused", keep=pgdata.parent):
            pass


if __name__ == "__main__":
    raise SystemExit(main())
