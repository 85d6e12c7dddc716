"""How long the embedded PostgreSQL takes to come up when no DATABASE_URL is set.

Cold start: a fresh data directory, so initdb + start + ``alembic upgrade head``. Warm start: the
same directory again (the cluster exists and is at head), so start + a migration check. Each run is
a new process, as every ``rowscope`` command is; it reports the time spent in
``resolve_database`` (start + migrate) and the whole process's wall time (interpreter, imports,
and stopping the server at exit).

    .venv/bin/python -m bench.embedded_start [--repetitions N] [--smoke] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(data_dir: Path) -> None:
    """One start, in this process: prints the seconds resolve_database took, then exits (and stops)."""
    from rowscope.server.database import resolve_database
    from rowscope.server.settings import Settings

    started = time.perf_counter()
    resolve_database(Settings(database_url=None, data_dir=data_dir, openai_api_key=None))
    print(json.dumps({"start": time.perf_counter() - started}))


def run_once(data_dir: Path) -> tuple[float, float]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ROWSCOPE_") and k not in {"DATABASE_URL", "OPENAI_API_KEY"}
    }
    started = time.perf_counter()
    done = subprocess.run(  # noqa: S603  (this interpreter running this file)
        [sys.executable, __file__, "--child", str(data_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    total = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the embedded start failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])["start"], total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repetitions", type=int, default=5, help="cold/warm pairs to measure")
    parser.add_argument("--smoke", action="store_true", help="one repetition: checks the benchmark runs")
    parser.add_argument("--out", type=Path, help="where to write the JSON report (default: bench/results/)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child)
        return 0
    repetitions = 1 if args.smoke else args.repetitions
    runs: dict[str, list[tuple[float, float]]] = {"cold": [], "warm": []}
    for _ in range(repetitions):
        data_dir = Path(tempfile.mkdtemp(prefix="rowscope-bench-"))
        try:
            runs["cold"].append(run_once(data_dir))
            runs["warm"].append(run_once(data_dir))
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
    from bench.common import Report, finish  # the parent runs as `python -m bench.embedded_start`

    report = Report("embedded_start", args.smoke)
    report.notes.append(f"{repetitions} repetition(s), medians; each run is a new process")
    for name, measured in runs.items():
        start = statistics.median(s for s, _ in measured)
        total = statistics.median(t for _, t in measured)
        report.add(f"{name} start (initdb if cold) + migrate", start, "s")
        report.add(f"{name} start, whole process", total, "s")
    return finish(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
