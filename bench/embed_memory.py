"""Issue 12, item 2: the offline model's memory after one add, and its speed.

Each measurement is a fresh process (``python -m bench.embed_memory --child``) that builds the
embedder as the server does (``build_embedder`` without an API key, the default batch size), loads
the model, embeds one 64-chunk document — what one ``add_training_content`` of 64 chunks asks of it —
and reads its own ``/proc/self/status``: VmRSS with the model loaded, VmRSS and VmHWM (the peak)
after the add, and VmRSS after four more documents. Each document's embedding is timed: chunks per
second (wall clock) and CPU seconds per chunk (the process's, so every core's).

Configurations: each ``--source DIR`` (a directory holding another ``rowscope`` package, e.g. the
previous commit's: ``git archive HEAD rowscope | tar -x -C DIR``), then this tree. They run in
``--rounds`` interleaved rounds, a fresh process per configuration per round; figures are medians
over the rounds, ratios against the first configuration.

    .venv/bin/python -m bench.embed_memory [--smoke] [--rounds N] [--source DIR ...]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import Report, finish, parser
from bench.toolcall import child_env

CHUNKS = 64
DOCUMENTS = 5  # the first is "one add"; the others show whether memory keeps growing


def status() -> dict[str, float]:
    """VmRSS and VmHWM of this process, MiB."""
    out: dict[str, float] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in {"VmRSS", "VmHWM"}:
                out[key] = int(value.split()[0]) / 1024
    return out


def child(documents: int) -> dict[str, Any]:
    import anyio

    from bench.ingestion import document
    from rowscope.embeddings import build_embedder
    from rowscope.embeddings.chunking import chunk_text
    from rowscope.server.settings import Settings

    settings = Settings(openai_api_key=None)
    texts = [
        [c.text for c in chunk_text(document((CHUNKS - 1) * 800 + 1000, seed=s))] for s in range(documents)
    ]
    assert all(len(t) == CHUNKS for t in texts)
    result: dict[str, Any] = {"seconds": [], "cpu": []}

    async def run() -> None:
        embedder = build_embedder(
            openai_api_key=None,
            openai_base_url=None,
            openai_model=settings.embedding_model,
            dimensions=1536,
            batch_size=settings.embedding_batch_size,
            timeout=600,
        )
        await embedder.embed(["load the model"])
        result["loaded"] = status()["VmRSS"]
        for n, batch in enumerate(texts):
            wall, cpu = time.perf_counter(), time.process_time()
            await embedder.embed(batch)
            result["seconds"].append(time.perf_counter() - wall)
            result["cpu"].append(time.process_time() - cpu)
            if n == 0:
                after = status()
                result["after_one"], result["peak_one"] = after["VmRSS"], after["VmHWM"]
        result["after_all"] = status()["VmRSS"]
        await embedder.aclose()

    anyio.run(run)
    import rowscope

    result["package"] = str(Path(rowscope.__file__).parent)
    return result


def spawn(source: Path | None, documents: int) -> dict[str, Any]:
    # `python -m` puts its working directory first on the path: the measured package's directory,
    # with this checkout (for bench/) after it.
    here = Path(__file__).resolve().parent.parent
    env = child_env(PYTHONPATH=os.pathsep.join(str(p) for p in (source, here) if p))
    done = subprocess.run(  # noqa: S603  (this interpreter, our own module)
        [sys.executable, "-m", "bench.embed_memory", "--child", str(documents)],
        cwd=source or here,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--child"]:
        print(json.dumps(child(int(argv[1]))))
        return 0
    p = parser(__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--source", type=Path, action="append", default=[], help="another rowscope package")
    p.add_argument("--rounds", type=int, default=5, help="fresh processes per configuration")
    args = p.parse_args(argv)
    report = Report("embed_memory", args.smoke)
    rounds, documents = (1, 2) if args.smoke else (args.rounds, DOCUMENTS)
    configs: list[tuple[str, Path | None]] = [(str(s), s.resolve()) for s in args.source]
    configs.append(("this tree", None))
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in configs}
    for _ in range(rounds):
        for label, source in configs:
            runs[label].append(spawn(source, documents))
    base: dict[str, float] = {}
    for label, _ in configs:
        got = runs[label]

        def median(key: str, got: list[dict[str, Any]] = got) -> float:
            return statistics.median(r[key] for r in got)

        speed = statistics.median(CHUNKS / s for r in got for s in r["seconds"])
        cpu = statistics.median(c / CHUNKS * 1000 for r in got for c in r["cpu"])
        figures = {
            "RSS, model loaded": (median("loaded"), "MiB"),
            f"RSS after one {CHUNKS}-chunk add": (median("after_one"), "MiB"),
            "peak RSS so far (VmHWM; loading the model included)": (median("peak_one"), "MiB"),
            f"RSS after {documents} adds": (median("after_all"), "MiB"),
            "chunks/s (median over adds)": (speed, "chunks/s"),
            "CPU per chunk (median)": (cpu, "ms"),
        }
        for name, (value, unit) in figures.items():
            first = name not in base
            base.setdefault(name, value)
            report.add(
                f"{label}: {name}",
                value,
                unit,
                baseline=None if first else configs[0][0],
                baseline_value=None if first else base[name],
            )
    for label, _ in configs:
        report.notes.append(f"{label}: rowscope imported from {runs[label][0]['package']}")
    report.notes.append(
        f"{rounds} round(s), each a fresh process per configuration; {documents} documents of "
        f"{CHUNKS} chunks each per process; the embedder as build_embedder makes it without an API key"
    )
    return finish(report, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
