"""Run every benchmark, each in its own process, and print one table.

    .venv/bin/python -m bench                 # the full suite (tens of minutes on 2 cores)
    .venv/bin/python -m bench --smoke         # tiny sizes: checks that every benchmark runs
    .venv/bin/python -m bench --only retrieval,oauth
    .venv/bin/python -m bench --million       # also retrieval at 1,000,000 chunks (long)
    git show HEAD:rowscope/db/knowledge.py > /tmp/knowledge_before.py
    .venv/bin/python -m bench --compare-knowledge /tmp/knowledge_before.py   # before/after, same data

Each benchmark writes ``bench/results/<name>[-smoke].json``; the whole run is written to
``bench/results/all[-smoke].json`` (``{"machine", "reports", "failed"}``). The exit status is
non-zero when any benchmark failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import RESULTS, machine, markdown, table

BENCHMARKS = [
    "toolcall",
    "inprocess",
    "retrieval",
    "ingestion",
    "oauth",
    "footprint",
    "embedded_start",
    "fairness",
    "embed_memory",
]
TIMEOUT = {"smoke": 180, "full": 3600, "million": 6 * 3600}


def run(name: str, extra: list[str], out: Path, timeout: int) -> tuple[bool, float, str]:
    started = time.perf_counter()
    try:
        done = subprocess.run(  # noqa: S603  (this interpreter, our own modules)
            [sys.executable, "-m", f"bench.{name}", "--out", str(out), *extra],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=Path(__file__).resolve().parent.parent,
        )
    except subprocess.TimeoutExpired:
        return False, time.perf_counter() - started, f"timed out after {timeout} s"
    elapsed = time.perf_counter() - started
    return done.returncode == 0 and out.exists(), elapsed, done.stderr[-3000:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else None
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes, seconds per benchmark")
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    p.add_argument("--million", action="store_true", help="also retrieval at 1,000,000 chunks")
    p.add_argument("--results", type=Path, default=RESULTS, help="directory for the JSON files")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown too")
    p.add_argument(
        "--compare-knowledge",
        type=Path,
        help="another knowledge.py (e.g. `git show HEAD:rowscope/db/knowledge.py`) measured by "
        "retrieval and ingestion on the same data, as the before of a change",
    )
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(unknown)}")
    suffix = "-smoke" if args.smoke else ""
    args.results.mkdir(parents=True, exist_ok=True)
    compare = ["--compare", str(args.compare_knowledge.resolve())] if args.compare_knowledge else []
    jobs = [
        (
            n,
            (["--smoke"] if args.smoke else []) + (compare if n in {"retrieval", "ingestion"} else []),
            f"{n}{suffix}",
        )
        for n in names
    ]
    if args.million and not args.smoke:
        jobs.append(("retrieval", ["--million"], "retrieval-1m"))
    reports, failed = [], []
    for name, extra, stem in jobs:
        out = args.results / f"{stem}.json"
        out.unlink(missing_ok=True)
        timeout = TIMEOUT["smoke" if args.smoke else "million" if "--million" in extra else "full"]
        print(f"running {stem} …", flush=True)
        ok, elapsed, stderr = run(name, extra, out, timeout)
        print(f"  {'done' if ok else 'FAILED'} in {elapsed:.1f} s", flush=True)
        if ok:
            reports.append(json.loads(out.read_text()))
        else:
            failed.append({"benchmark": stem, "error": stderr})
            print(stderr, file=sys.stderr)
    summary = {"machine": machine(), "smoke": args.smoke, "reports": reports, "failed": failed}
    path = args.results / f"all{suffix}.json"
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print()
    print(table(reports))
    if args.markdown:
        print()
        print(markdown(reports))
    print(f"\nwritten: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
