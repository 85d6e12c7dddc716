"""The benchmark suite in smoke mode (tiny sizes): every benchmark still runs and writes its JSON,
so the suite never rots. The figures themselves are not asserted — benchmarks are not timed tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIGURE_KEYS = {"name", "value", "unit", "baseline", "baseline_value", "ratio", "target", "met", "note"}
EXPECTED = {
    "toolcall": [
        "rowscope query_records, 1 worker(s), 1 client(s): throughput",
        "floor, 1 worker(s), 1 client(s): throughput",
        "rowscope query_records, 2026-07-28 wire, 1 worker(s), 1 client(s): throughput",
        "floor, 2026-07-28 wire, 1 worker(s), 1 client(s): throughput",
    ],
    "inprocess": [
        "floor: CPU per call",
        "rowscope: CPU per call",
        "rowscope, a new filter value every call: CPU per call",
        "rowscope, a new filter form every call: CPU per call",
        "rowscope, 2026-07-28 wire: CPU per call",
        "floor, 2026-07-28 wire: CPU per call",
    ],
    "retrieval": ["recall@10, tiny", "recall@10, medium", "recall@10, large", "p99 DB time, large"],
    "ingestion": ["DB-side insert (KnowledgeStore.insert)", "same document again: chunks added"],
    "oauth": ["verify_token p50 (same token, warm)", "POST /token (authorization_code), 1 client(s)"],
    "footprint": ["serve -> first tools/call answered (median)", "rowscope RSS at rest"],
    "embedded_start": ["cold start (initdb if cold) + migrate"],
    "fairness": ["this tree: search p50 alone", "this tree: search p50, 3 users adding"],
    "embed_memory": ["this tree: RSS after one 64-chunk add", "this tree: chunks/s (median over adds)"],
}


@pytest.mark.slow
def test_every_benchmark_runs_in_smoke_mode_and_writes_its_figures(tmp_path: Path) -> None:
    """Our choice (issue 4): `python -m bench --smoke` exits 0 and writes the JSON of every benchmark."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--results", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "all-smoke.json").read_text())
    assert summary["failed"] == []
    assert {"nproc", "memory_gib", "python"} <= set(summary["machine"])
    reports = {r["benchmark"]: r for r in summary["reports"]}
    assert set(reports) == set(EXPECTED)
    for name, wanted in EXPECTED.items():
        report = reports[name]
        assert report["smoke"] is True
        assert (tmp_path / f"{name}-smoke.json").exists()
        assert all(set(f) == FIGURE_KEYS for f in report["figures"])
        names = [f["name"] for f in report["figures"]]
        for prefix in wanted:
            assert any(n.startswith(prefix) for n in names), (name, prefix, names)
