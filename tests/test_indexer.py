"""Deferred indexing of training chunks (migration 0007, rowscope/db/indexer.py), on the real
database: chunks go in unindexed, search finds them at once, the background indexer puts them in the
HNSW graph, and nothing but the connecting role can."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from mcp.client import Client
from sqlalchemy.exc import DBAPIError

from rowscope.db import knowledge, migrate
from rowscope.db.engine import Database, DatabaseUrl
from rowscope.db.indexer import Indexer
from rowscope.server import demo
from rowscope.server.app import build_mcp, build_runtime
from rowscope.server.runtime import Runtime
from rowscope.server.settings import Settings
from tests.conftest import USERS, structured, table_schema

pytestmark = pytest.mark.anyio

ALICE_COACH = demo._id("spark-alice-coach")  # alice owns it
HNSW = "ix_spark_embeddings_embedding_bq_hnsw"
BACKLOG = "ix_spark_embeddings_unindexed"
SOURCE = "test-indexer"


@pytest.fixture
def engine(admin: sa.Engine) -> Iterator[sa.Engine]:
    """The superuser connection; every chunk a test here adds (source id SOURCE) is removed after."""
    yield admin
    with admin.begin() as conn:
        conn.execute(sa.text("DELETE FROM spark_embeddings WHERE source_id = :s"), {"s": SOURCE})


def unindexed(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(sa.text("SELECT count(*) FROM spark_embeddings WHERE NOT indexed")).scalar_one()
        )


def random_vectors(n: int, seed: int) -> list[list[float]]:
    v = np.random.default_rng(seed).standard_normal((n, 1536)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v.tolist()  # type: ignore[no-any-return]


async def add_chunks(
    runtime: Runtime, texts: list[str], vectors: list[list[float]], *, spark: uuid.UUID = ALICE_COACH
) -> int:
    """Insert chunks as add_training_content does: KnowledgeStore.insert in alice's transaction."""
    store = knowledge.KnowledgeStore(runtime.policy)
    rows = [
        store.row(
            spark,
            t,
            uuid.uuid5(uuid.NAMESPACE_URL, t).hex * 2,
            "manual_entry",
            SOURCE,
            v,
            runtime.embedder.model,
            {},
        )
        for t, v in zip(texts, vectors, strict=True)
    ]
    async with runtime.database.user_transaction(USERS["alice"]) as conn:
        return await store.insert(conn, rows)


def indexer_of(runtime: Runtime, batch_size: int = 200) -> Indexer:
    knowledge_spec = runtime.policy_file.knowledge
    assert knowledge_spec is not None
    return Indexer(runtime.database, knowledge_spec, batch_size=batch_size)


def plan_indexes(plan: Any) -> set[str]:
    """Every index an EXPLAIN (FORMAT JSON) plan scans."""
    found: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        if "Index Name" in node:
            found.add(node["Index Name"])
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return found


async def test_chunks_are_inserted_unindexed_and_found_by_the_graph_walk_before_the_indexer_runs(
    runtime: Runtime, engine: sa.Engine
) -> None:
    """Issue 4: a chunk is searchable the moment its insert commits. With a readable set above the
    exact-scan limit, search walks the partial HNSW index (the plan uses it: the walk repeats its
    predicate) and scores the unindexed readable chunks exactly, so it returns what the exact scan
    returns, in the same order."""
    await indexer_of(runtime).drain()  # the demo's chunks in the graph, the new ones below not
    text = "Zanzibar marmalade protocol for the quarterly offsite, second revision."
    (vector,) = await runtime.embedder.embed([text])
    fillers = [f"filler chunk {i}" for i in range(40)]
    assert await add_chunks(runtime, [text, *fillers], [vector, *random_vectors(40, seed=1)]) == 41
    with engine.connect() as conn:
        flags = conn.execute(
            sa.text("SELECT DISTINCT indexed FROM spark_embeddings WHERE source_id = :s"), {"s": SOURCE}
        ).scalars()
        assert list(flags) == [False]

    captured: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, parameters: Any, _ctx: Any, _many: bool) -> None:
        captured.append((statement, parameters))

    async def search(store: knowledge.KnowledgeStore) -> tuple[list[knowledge.Hit], int, set[str]]:
        async with runtime.database.user_transaction(USERS["alice"]) as conn:
            # The demo is tiny, so the planner would rather sort it: take an index whenever one
            # can serve the query at all.
            await conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
            await conn.execute(sa.text("SET LOCAL enable_sort = off"))
            captured.clear()
            sa.event.listen(runtime.database.tool_engine.sync_engine, "before_cursor_execute", capture)
            try:
                hits = await store.search(
                    conn,
                    USERS["alice"],
                    vector,
                    model=runtime.embedder.model,
                    top_k=5,
                    parent_id=None,
                    source_types=None,
                )
            finally:
                sa.event.remove(runtime.database.tool_engine.sync_engine, "before_cursor_execute", capture)
            scans = (
                await conn.execute(sa.text(f"SELECT pg_stat_get_xact_numscans('{HNSW}'::regclass)"))
            ).scalar_one()
            statement, parameters = captured[-1]
            plan = (await conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters)).scalar_one()
        return hits, int(scans), plan_indexes(json.loads(plan) if isinstance(plan, str) else plan)

    exact, exact_scans, exact_plan = await search(knowledge.KnowledgeStore(runtime.policy))
    walked, walked_scans, walked_plan = await search(
        knowledge.KnowledgeStore(runtime.policy, exact_search_rows=0, hamming_search_rows=0)
    )
    assert (exact_scans, walked_scans) == (0, 1)
    assert HNSW not in exact_plan and {HNSW, BACKLOG} <= walked_plan
    assert walked[0].content == text and walked[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert [h.id for h in walked] == [h.id for h in exact]
    assert [h.similarity for h in walked] == pytest.approx([h.similarity for h in exact])
    assert {h.parent_id for h in walked} - {ALICE_COACH}, "demo chunks come from the graph walk"


async def test_the_indexer_drains_the_backlog_changing_nothing_but_the_flag(
    runtime: Runtime, engine: sa.Engine
) -> None:
    """Our choice: batches of the configured size until none is left; every other column of every
    row stays as it was (updated_at included); a second drain finds nothing."""
    await add_chunks(runtime, [f"drained {i}" for i in range(23)], random_vectors(23, seed=2))
    backlog = unindexed(engine)
    assert backlog >= 23

    def rows() -> dict[Any, tuple[Any, ...]]:
        with engine.connect() as conn:
            result = conn.execute(sa.text("SELECT * FROM spark_embeddings ORDER BY id")).mappings()
            return {r["id"]: tuple(v for k, v in r.items() if k != "indexed") for r in result}

    before = rows()
    indexer = indexer_of(runtime, batch_size=5)
    assert await indexer.index_batch() == 5
    assert unindexed(engine) == backlog - 5
    assert await indexer.drain() == backlog - 5
    assert unindexed(engine) == 0
    assert rows() == before
    assert await indexer.drain() == 0


async def test_two_indexers_at_once_index_every_chunk_exactly_once(
    runtime: Runtime, engine: sa.Engine, database_url: str
) -> None:
    """Our choice (several workers and servers share one database): concurrent drains over separate
    connections skip each other's locked rows, and between them flip each row once."""
    await add_chunks(runtime, [f"shared backlog {i}" for i in range(120)], random_vectors(120, seed=3))
    backlog = unindexed(engine)
    other = Database(DatabaseUrl.parse(database_url), pool_size=2)
    try:
        first, second = indexer_of(runtime, batch_size=7), indexer_of(runtime, batch_size=7)
        second.database = other
        counts: list[int] = []

        async def drain(indexer: Indexer) -> None:
            counts.append(await indexer.drain())

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(drain, first)
                tasks.start_soon(drain, second)
    finally:
        await other.dispose()
    assert sum(counts) == backlog
    assert unindexed(engine) == 0


async def test_an_indexer_skips_chunks_another_transaction_holds_instead_of_waiting(
    runtime: Runtime, engine: sa.Engine
) -> None:
    """Our choice: FOR UPDATE SKIP LOCKED, so an indexer never waits on another indexer's batch
    (or a removal in progress); the held rows are left for a later pass."""
    await indexer_of(runtime).drain()
    await add_chunks(runtime, [f"held {i}" for i in range(6)], random_vectors(6, seed=4))
    with engine.connect() as holder:
        held = holder.execute(
            sa.text(
                "SELECT id FROM spark_embeddings WHERE NOT indexed AND content LIKE 'held %' "
                "LIMIT 2 FOR UPDATE"
            )
        ).all()
        with anyio.fail_after(10):
            assert await indexer_of(runtime).drain() == 4
        holder.rollback()
    assert len(held) == 2 and unindexed(engine) == 2
    assert await indexer_of(runtime).drain() == 2


async def test_the_tool_role_cannot_mark_chunks_indexed(runtime: Runtime, engine: sa.Engine) -> None:
    """Our choice (lock 2): the tool role has no UPDATE on the knowledge table, so no tool path can
    put a row in the graph or touch any column of an existing chunk; only the indexer, as the
    connecting role, can."""
    await add_chunks(runtime, ["not the tool's to index"], random_vectors(1, seed=5))
    with pytest.raises(DBAPIError) as refused:
        async with runtime.database.user_transaction(USERS["alice"]) as conn:
            await conn.execute(
                sa.text("UPDATE spark_embeddings SET indexed = true WHERE spark_id = :s"), {"s": ALICE_COACH}
            )
    assert getattr(refused.value.orig, "sqlstate", None) == "42501"  # insufficient_privilege
    assert unindexed(engine) >= 1


@asynccontextmanager
async def serving(settings: Settings, database_url: str) -> AsyncIterator[tuple[Runtime, Client]]:
    """An in-process MCP server (its lifespan runs the background indexer) and a client as alice."""
    runtime = build_runtime(settings, database_url, stdio_user=USERS["alice"])
    async with Client(build_mcp(runtime)) as client:
        yield runtime, client


async def test_adding_content_wakes_the_background_indexer(
    settings: Settings, database_url: str, engine: sa.Engine
) -> None:
    """Issue 4: the server's indexer is woken when add_training_content commits, long before its
    periodic tick (an hour here), and indexes the new chunks."""
    hourly = settings.model_copy(update={"index_interval": 3600.0})
    async with serving(hourly, database_url) as (runtime, client):
        assert runtime.indexer is not None
        with anyio.fail_after(30):
            await runtime.indexer.wait_passes(1)  # the pass on start drains what was there
        added = structured(
            await client.call_tool(
                "add_training_content",
                {"spark_id": str(ALICE_COACH), "content": " ".join(f"wake{i}" for i in range(600))},
            )
        )
        with anyio.fail_after(30):
            await runtime.indexer.settled()
        assert unindexed(engine) == 0
        structured(
            await client.call_tool(
                "remove_training_content", {"spark_id": str(ALICE_COACH), "item_id": added["item_id"]}
            )
        )
    assert added["chunks_added"] > 1


async def test_a_backlog_left_by_another_process_is_drained_on_start_and_on_the_tick(
    settings: Settings, database_url: str, runtime: Runtime, engine: sa.Engine
) -> None:
    """Issue 4: chunks another process inserted and never indexed (it crashed, or stopped) are
    drained by the next server to start, and by a running server's periodic pass, without a wake."""
    await add_chunks(runtime, [f"orphan {i}" for i in range(9)], random_vectors(9, seed=6))
    ticking = settings.model_copy(update={"index_interval": 0.2})
    async with serving(ticking, database_url) as (served, _client):
        assert served.indexer is not None
        with anyio.fail_after(30):
            await served.indexer.wait_passes(1)
        assert unindexed(engine) == 0
        await add_chunks(runtime, [f"late orphan {i}" for i in range(4)], random_vectors(4, seed=7))
        passes = served.indexer.passes
        with anyio.fail_after(30):
            await served.indexer.wait_passes(passes + 2)  # the next pass begins after the insert
        assert unindexed(engine) == 0


def test_migration_0007_downgrades_to_the_full_index_and_upgrades_again(
    pg_admin: Callable[[str], str],
) -> None:
    """Our choice (STYLE.md 7): a real downgrade. Down: the flag and the backlog index are gone
    and the HNSW index covers every row again; up: the flag (default true) and the partial indexes."""
    url = pg_admin(f"rowscope_indexer_{uuid.uuid4().hex[:8]}")
    config = migrate.alembic_config(url)
    engine = sa.create_engine(url)

    def shape() -> tuple[bool, dict[str, str]]:
        columns, indexes = table_schema(engine, "spark_embeddings")
        return "indexed" in columns, indexes

    try:
        command.upgrade(config, "head")
        head = shape()
        flag, indexes = head
        assert flag and indexes[HNSW].endswith("WHERE indexed")
        assert indexes[BACKLOG].endswith("WHERE (NOT indexed)")
        command.downgrade(config, "0006")
        flag, indexes = shape()
        assert not flag and BACKLOG not in indexes and "WHERE" not in indexes[HNSW]
        command.upgrade(config, "head")
        assert shape() == head
    finally:
        engine.dispose()
