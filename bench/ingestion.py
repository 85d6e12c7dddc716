"""Question 3: ingestion — ``add_training_content`` of a 1 MB document.

* DB side: ``KnowledgeStore.insert`` of the document's chunks with ready vectors (no embedder), in a
  user transaction under row-level security: chunks per second. The chunks go in unindexed
  (migration 0007), so this is the call's own cost; the HNSW graph is built afterwards by the
  background indexer, measured next. With ``--compare FILE`` the KnowledgeStore in FILE (e.g. the
  previous knowledge.py) inserts the same rows, as the baseline. Each DB-side figure is taken on
  its own freshly migrated database (an empty table, so an empty HNSW graph), and every insert gets
  vectors no other insert used: pgvector's HNSW stores an exact duplicate of an indexed vector as one
  more heap pointer of the existing element, without touching the graph, so re-inserting the same
  vectors would measure almost nothing of the index.
* Background indexing: ``Indexer.drain`` of that backlog, by one indexer and by two at once (what
  two server workers do); and insert + drain together, the total work the database does.
* The same insert indexed at once (the path before migration 0007: rows inserted with the flag
  true, so the graph is built inside the call), with the previous index (full-precision HNSW, m=16,
  ef_construction=64, from migrations 0001-0005), and with no vector index at all.
* End to end through the MCP tool (SDK client, in process, the server's indexer running): with a
  trivial embedder (ready vectors, so the figure is chunking + dedup + insert) and with the offline
  embedder (MiniLM int8); and how long after the call returns the server's indexer has the new
  chunks in the graph.
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

import anyio
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


# The approximate-search index of migrations 0001-0005, measured as the "before" of migration 0006.
PREVIOUS_INDEX = (
    "CREATE INDEX ix_spark_embeddings_embedding_hnsw ON spark_embeddings "
    "USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
)


class ReadyVectors:
    """A trivial embedder: random unit vectors, so timings exclude embedding. Give each insert its
    own seed (see the module docstring about duplicates)."""

    model = "bench-ready-vectors"
    dimensions = DIM

    def __init__(self, seed: int = 3) -> None:
        self.rng = np.random.default_rng(seed)

    async def embed(self, texts: Sequence[str], *, user: uuid.UUID | None = None) -> list[list[float]]:
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


async def insert_rate(
    url: str, text: str, spark: uuid.UUID, store_cls: Any, seed: int, *, immediate: bool = False
) -> tuple[float, int]:
    """Chunks per second of one ``KnowledgeStore.insert`` of the document; ``immediate``: with the
    rows indexed as they are inserted (the flag left at its default, true), as before 0007."""
    from rowscope.embeddings.chunking import chunk_text
    from rowscope.server.app import build_runtime
    from rowscope.server.settings import Settings

    runtime = build_runtime(Settings(database_url=url, openai_api_key=None), url)
    await runtime.start()
    try:
        store = store_cls(runtime.policy)
        if immediate:
            store.spec = store.spec.model_copy(update={"indexed_column": None})
        chunks = list({c.sha256: c for c in chunk_text(text)}.values())
        vectors = await ReadyVectors(seed).embed([c.text for c in chunks])
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


async def drain(url: str, indexers: int) -> tuple[float, int]:
    """Seconds for ``indexers`` background indexers running at once (each its own connection, as
    server workers are) to index the whole backlog, and how many chunks they indexed."""
    from rowscope.db.engine import Database, DatabaseUrl
    from rowscope.db.indexer import Indexer
    from rowscope.db.policy import load_policy
    from rowscope.server.settings import Settings

    settings = Settings(database_url=url, openai_api_key=None)
    spec = load_policy(None).knowledge
    assert spec is not None
    databases = [Database(DatabaseUrl.parse(url), pool_size=1) for _ in range(indexers)]
    done: list[int] = []
    try:

        async def one(database: Database) -> None:
            done.append(await Indexer(database, spec, batch_size=settings.index_batch_size).drain())

        started = time.perf_counter()
        async with anyio.create_task_group() as tasks:
            for database in databases:
                tasks.start_soon(one, database)
        return time.perf_counter() - started, sum(done)
    finally:
        for database in databases:
            await database.dispose()


async def end_to_end(
    url: str, text: str, spark: uuid.UUID, *, offline: bool, seed: int = 3
) -> list[tuple[float, Any]]:
    """Timings: the embedder's warm-up, the first add, the server's indexer settling after it
    (seconds after the call returned), the same document again."""
    from mcp.client import Client

    from rowscope.server.app import build_mcp, build_runtime
    from rowscope.server.settings import Settings

    settings = Settings(database_url=url, openai_api_key=None)
    runtime = build_runtime(settings, url, stdio_user=USER)
    if not offline:
        runtime.embedder = ReadyVectors(seed)
    server = build_mcp(runtime)
    timings: list[tuple[float, Any]] = []
    async with Client(server) as client:
        started = time.perf_counter()
        await runtime.embedder.embed(["warm-up: load the model before timing"])
        timings.append((time.perf_counter() - started, None))
        for attempt in range(2):
            started = time.perf_counter()
            result = await client.call_tool(
                "add_training_content", {"spark_id": str(spark), "content": text, "title": "bench"}
            )
            elapsed = time.perf_counter() - started
            assert not result.is_error, result.content
            timings.append((elapsed, result.structured_content))
            if attempt == 0:
                # The new chunks are searchable already; the graph is the indexer's, woken on commit.
                assert runtime.indexer is not None
                started = time.perf_counter()
                await runtime.indexer.settled()
                timings.append((time.perf_counter() - started, None))
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

        def database(name: str, index: str | None = None) -> tuple[str, str]:
            """A freshly migrated database with the user and the sparks; ``index`` replaces the
            migration's approximate-search index (``""``: no vector index at all)."""
            url = migrated_database(server, name)
            dsn = server.libpq_dsn(name)
            with psycopg.connect(dsn, autocommit=True) as conn:
                if index is not None:
                    for (hnsw,) in conn.execute(
                        "SELECT indexname FROM pg_indexes WHERE tablename = 'spark_embeddings' "
                        "AND indexdef LIKE '%USING hnsw%'"
                    ).fetchall():
                        conn.execute(f'DROP INDEX "{hnsw}"')
                    if index:
                        conn.execute(index)
                conn.execute(
                    "INSERT INTO user_profiles (id, email) VALUES (%s, 'ingest@example.com')", (USER,)
                )
                for i, spark in enumerate(SPARKS):
                    conn.execute(
                        "INSERT INTO sparks (id, user_id, name) VALUES (%s, %s, %s)", (spark, USER, f"s{i}")
                    )
            return url, dsn

        url, dsn = database("bench_ingestion")
        report.notes.append(pg_version(dsn))
        rate, chunks = asyncio.run(insert_rate(url, text, SPARKS[0], knowledge_store_class(None), seed=10))
        # The insert's backlog, indexed in the background, measured on the same table right after.
        one_seconds, one_indexed = asyncio.run(drain(url, 1))
        assert one_indexed == chunks, (one_indexed, chunks)
        # The old path, in the same run: the graph built inside the call.
        immediate_url, _ = database("bench_ingestion_immediate")
        immediate, _ = asyncio.run(
            insert_rate(immediate_url, text, SPARKS[0], knowledge_store_class(None), seed=15, immediate=True)
        )
        baseline = None
        if args.compare is not None:
            compare_url, _ = database("bench_ingestion_compare")
            baseline, _ = asyncio.run(
                insert_rate(compare_url, text, SPARKS[0], knowledge_store_class(args.compare), seed=11)
            )
        report.add(
            "DB-side insert (KnowledgeStore.insert)",
            rate,
            "chunks/s",
            baseline=f"{args.compare.stem} insert" if args.compare else "indexed at once (before 0007)",
            baseline_value=baseline if args.compare else immediate,
            target=">= 5,000/s",
            met=rate >= 5000,
            note=f"{chunks} chunks, inserted unindexed",
        )
        report.add(
            "DB-side insert indexed at once (the path before 0007)",
            immediate,
            "chunks/s",
            note="the same rows with the flag left true: the graph is built inside the call",
        )
        report.add(
            "background indexing, 1 indexer: backlog drained",
            one_seconds,
            "s",
            note=f"{one_indexed} chunks in batches of the default size",
        )
        report.add(
            "background indexing, 1 indexer",
            one_indexed / one_seconds,
            "chunks/s",
            baseline="indexed at once",
            baseline_value=immediate,
        )
        two_url, _ = database("bench_ingestion_two_indexers")
        asyncio.run(insert_rate(two_url, text, SPARKS[0], knowledge_store_class(None), seed=16))
        two_seconds, two_indexed = asyncio.run(drain(two_url, 2))
        assert two_indexed == chunks, (two_indexed, chunks)
        report.add(
            "background indexing, 2 indexers at once",
            two_indexed / two_seconds,
            "chunks/s",
            baseline="1 indexer",
            baseline_value=one_indexed / one_seconds,
            note=f"drained in {two_seconds:.2f} s",
        )
        total = chunks / (chunks / rate + one_seconds)
        report.add(
            "insert + background indexing (1 indexer), total database work",
            total,
            "chunks/s",
            baseline="indexed at once",
            baseline_value=immediate,
        )
        fast = asyncio.run(end_to_end(url, text, SPARKS[1], offline=False, seed=12))
        _, (first, added), (settle, _), (_, repeat) = fast
        report.add(
            "add_training_content, ready vectors", chunks / first, "chunks/s", note="embedder excluded"
        )
        report.add(
            "add_training_content, ready vectors: server's indexer done",
            settle,
            "s",
            note="after the call returned; the chunks are searchable before",
        )
        offline = asyncio.run(end_to_end(url, text, SPARKS[2], offline=True))
        (load_off, _), (first_off, added_off), (settle_off, _), (again_off, repeat_off) = offline
        report.add("offline embedder: model load (first embed)", load_off, "s", note="excluded below")
        report.add(
            "add_training_content, offline embedder", added_off["chunks_added"] / first_off, "chunks/s"
        )
        report.add("add_training_content, offline embedder, first", first_off, "s")
        report.add("add_training_content, offline embedder: server's indexer done", settle_off, "s")
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
        # What the vector index costs the insert: the same insert, each on its own empty table,
        # with the previous index (indexing every row it is given) and with none.
        previous_url, _ = database("bench_ingestion_previous_index", PREVIOUS_INDEX)
        previous, _ = asyncio.run(
            insert_rate(previous_url, text, SPARKS[0], knowledge_store_class(None), seed=13)
        )
        report.add(
            "DB-side insert with the previous index (HNSW vector m=16 ef=64)",
            previous,
            "chunks/s",
            baseline="migration's path",
            baseline_value=rate,
            note="the index of migrations 0001-0005 (not partial: indexes on insert)",
        )
        bare_url, _ = database("bench_ingestion_no_index", "")
        bare, _ = asyncio.run(insert_rate(bare_url, text, SPARKS[0], knowledge_store_class(None), seed=14))
        report.add(
            "DB-side insert without any vector index",
            bare,
            "chunks/s",
            baseline="migration's path",
            baseline_value=rate,
            note="the ceiling: no index maintenance",
        )
    return finish(report, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
