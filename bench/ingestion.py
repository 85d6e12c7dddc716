"""Question 3: ingestion — ``add_training_content`` of a 1 MB document.

* DB side: ``KnowledgeStore.insert`` of the document's chunks with ready vectors (no embedder), in a
  user transaction under row-level security: chunks per second. With ``--compare FILE`` the
  KnowledgeStore in FILE (e.g. the previous knowledge.py) inserts the same rows into another spark,
  as the baseline.
* End to end through the MCP tool (SDK client, in process): with a trivial embedder (ready vectors,
  so the figure is chunking + dedup + insert) and with the offline embedder (MiniLM int8).
* The same document again: zero chunks added, and how many times faster than the first time.

    .venv/bin/python -m bench.ingestion [--smoke] [--compare FILE]
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from bench.common import Report, finish, migrated_database, parser, pg_version, scratch_cluster

USER = uuid.UUID(int=(0xC1 << 120) | 1)
SPARKS = [uuid.UUID(int=(0xC3 << 120) | i) for i in range(5)]
DIM = 1536


def document(size: int, seed: int = 7) -> str:
    rng = np.random.default_rng(seed)
    vocabulary = [
        "grind", "dose", "crema", "tamp", "basket", "brew", "ratio", "water", "bloom", "roast",
        "extraction", "pressure", "temperature", "channel", "puck", "shot", "milk", "steam",
    ]  # fmt: skip
    words: list[str] = []
    length = 0
    while length < size:
        sentence = " ".join(vocabulary[i] for i in rng.integers(0, len(vocabulary), 12))
        sentence = f"{sentence.capitalize()} {int(rng.integers(0, 10_000))}."
        words.append(sentence)
        length += len(sentence) + 1
    return " ".join(words)[:size]


class ReadyVectors:
    """A trivial embedder: random unit vectors, so timings exclude embedding."""

    model = "bench-ready-vectors"
    dimensions = DIM

    def __init__(self) -> None:
        self.rng = np.random.default_rng(3)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        v = self.rng.standard_normal((len(texts), DIM)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return v.tolist()  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        return None


def knowledge_store_class(path: Path | None) -> Any:
    if path is None:
        from rowscope.db.knowledge import KnowledgeStore

        return KnowledgeStore
    spec = importlib.util.spec_from_file_location("knowledge_compared", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.KnowledgeStore


async def insert_rate(url: str, text: str, spark: uuid.UUID, store_cls: Any) -> tuple[float, int]:
    from rowscope.embeddings.chunking import chunk_text
    from rowscope.server.app import build_runtime
    from rowscope.server.settings import Settings

    runtime = build_runtime(Settings(database_url=url, openai_api_key=None), url)
    await runtime.start()
    try:
        store = store_cls(runtime.policy)
        chunks = list({c.sha256: c for c in chunk_text(text)}.values())
        vectors = await ReadyVectors().embed([c.text for c in chunks])
        rows = [
            store.row(spark, c.text, c.sha256, "document", "bench", v, "bench", {"chunk_index": c.index})
            for c, v in zip(chunks, vectors, strict=True)
        ]
        started = time.perf_counter()
        async with runtime.database.user_transaction(USER) as conn:
            added = await store.insert(conn, rows)
        elapsed = time.perf_counter() - started
        assert added == len(rows), (added, len(rows))
        return len(rows) / elapsed, added
    finally:
        await runtime.close()


async def end_to_end(url: str, text: str, spark: uuid.UUID, *, offline: bool) -> list[tuple[float, Any]]:
    from mcp.client import Client

    from rowscope.server.app import build_mcp, build_runtime
    from rowscope.server.settings import Settings

    settings = Settings(database_url=url, openai_api_key=None)
    runtime = build_runtime(settings, url, stdio_user=USER)
    if not offline:
        runtime.embedder = ReadyVectors()
    server = build_mcp(runtime)
    timings: list[tuple[float, Any]] = []
    async with Client(server) as client:
        started = time.perf_counter()
        await runtime.embedder.embed(["warm-up: load the model before timing"])
        timings.append((time.perf_counter() - started, None))
        for _ in range(2):
            started = time.perf_counter()
            result = await client.call_tool(
                "add_training_content", {"spark_id": str(spark), "content": text, "title": "bench"}
            )
            elapsed = time.perf_counter() - started
            assert not result.is_error, result.content
            timings.append((elapsed, result.structured_content))
    return timings


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--compare", type=Path, help="a KnowledgeStore file to measure as the baseline insert")
    args = p.parse_args(argv)
    size = 20_000 if args.smoke else 1_000_000
    text = document(size)
    report = Report("ingestion", args.smoke)
    report.notes.append(f"document: {len(text):,} characters")
    with scratch_cluster("ingestion") as server:
        url = migrated_database(server, "bench_ingestion")
        dsn = server.libpq_dsn("bench_ingestion")
        report.notes.append(pg_version(dsn))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO user_profiles (id, email) VALUES (%s, 'ingest@example.com')", (USER,))
            for i, spark in enumerate(SPARKS):
                conn.execute(
                    "INSERT INTO sparks (id, user_id, name) VALUES (%s, %s, %s)", (spark, USER, f"s{i}")
                )
        baseline = None
        if args.compare is not None:
            baseline, _ = asyncio.run(insert_rate(url, text, SPARKS[3], knowledge_store_class(args.compare)))
        rate, chunks = asyncio.run(insert_rate(url, text, SPARKS[0], knowledge_store_class(None)))
        report.add(
            "DB-side insert (KnowledgeStore.insert)",
            rate,
            "chunks/s",
            baseline=f"{args.compare.stem} insert" if args.compare else None,
            baseline_value=baseline,
            target=">= 5,000/s",
            met=rate >= 5000,
            note=f"{chunks} chunks",
        )
        fast = asyncio.run(end_to_end(url, text, SPARKS[1], offline=False))
        _, (first, added), (_, repeat) = fast
        report.add(
            "add_training_content, ready vectors", chunks / first, "chunks/s", note="embedder excluded"
        )
        offline = asyncio.run(end_to_end(url, text, SPARKS[2], offline=True))
        (load_off, _), (first_off, added_off), (again_off, repeat_off) = offline
        report.add("offline embedder: model load (first embed)", load_off, "s", note="excluded below")
        report.add(
            "add_training_content, offline embedder", added_off["chunks_added"] / first_off, "chunks/s"
        )
        report.add("add_training_content, offline embedder, first", first_off, "s")
        report.add(
            "same document again: chunks added",
            float(repeat_off["chunks_added"]),
            "chunks",
            target="0",
            met=repeat_off["chunks_added"] == 0 and repeat["chunks_added"] == 0,
        )
        speedup = first_off / again_off
        report.add(
            "same document again: time",
            again_off,
            "s",
            baseline="first add",
            baseline_value=first_off,
            target="<= 0.1x (10x faster)",
            met=speedup >= 10,
        )
        assert added["chunks_added"] == chunks
        # What the HNSW index costs the insert: the same rows with the index dropped (last, as
        # nothing after this needs it).
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP INDEX ix_spark_embeddings_embedding_hnsw")
        bare, _ = asyncio.run(insert_rate(url, text, SPARKS[4], knowledge_store_class(None)))
        report.add(
            "DB-side insert without the HNSW index",
            bare,
            "chunks/s",
            baseline="with the index",
            baseline_value=rate,
            note="shows the share of HNSW maintenance",
        )
    return finish(report, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
