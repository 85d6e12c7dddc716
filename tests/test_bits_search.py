"""The Hamming plan for mid-size readable sets (migration 0008, rowscope/db/knowledge.py), on the
real database: chosen between the two bounds, an index-only scan of the stored sign bits, the exact
top k after the re-rank, chunks found whether or not they are in the HNSW graph yet."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command

from rowscope.db import knowledge, migrate
from rowscope.server.runtime import Runtime
from tests.conftest import USERS, table_schema

pytestmark = pytest.mark.anyio

BITS_INDEX = "ix_spark_embeddings_sign_bits"
HNSW = "ix_spark_embeddings_embedding_bq_hnsw"
SOURCE = "test-bits-search"
DIM = 1536


@pytest.fixture
def spark(admin: sa.Engine) -> Iterator[uuid.UUID]:
    """A spark of alice's holding only this module's chunks, removed (with them) after."""
    spark_id = uuid.uuid4()
    with admin.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO sparks (id, user_id, name) VALUES (:id, :u, 'bits search')"),
            {"id": spark_id, "u": USERS["alice"]},
        )
    yield spark_id
    with admin.begin() as conn:
        conn.execute(sa.text("DELETE FROM sparks WHERE id = :id"), {"id": spark_id})


def clustered(n: int, near: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors, the first ``near`` of them noisy copies of one centre, and a query near
    that centre: the true top k are among them, at distances the sign bits can tell apart only
    roughly, so a wrong ranking shows."""
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal(DIM).astype(np.float32)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    # Noise growing along the near ones, so their exact order is well defined.
    scale = np.linspace(0.6, 1.6, near, dtype=np.float32)[:, None]
    vectors[:near] = centre + scale * rng.standard_normal((near, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    query = centre + 0.5 * rng.standard_normal(DIM).astype(np.float32)
    query /= np.linalg.norm(query)
    return vectors, query


def insert(
    admin: sa.Engine, spark: uuid.UUID, vectors: np.ndarray, model: str, indexed: Callable[[int], bool]
) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(len(vectors))]
    with admin.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO spark_embeddings (id, spark_id, content, content_hash, source_type, source_id,"
                " embedding, embedding_model, indexed)"
                " VALUES (:id, :s, :c, :h, 'manual_entry', :src, :v, :m, :x)"
            ),
            [
                {
                    "id": i,
                    "s": spark,
                    "c": f"bits chunk {n}",
                    "h": f"{n:064d}",
                    "src": SOURCE,
                    "v": "[" + ",".join(f"{x:.7g}" for x in v) + "]",
                    "m": model,
                    "x": indexed(n),
                }
                for n, (i, v) in enumerate(zip(ids, vectors, strict=True))
            ],
        )
    # Set the visibility map as autovacuum would on a real table: the planner counts on an
    # index-only scan skipping the heap only for pages it marks all-visible.
    with admin.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(
            sa.text("VACUUM ANALYZE spark_embeddings")
        )
    return ids


def plan_nodes(plan: Any) -> list[tuple[str, str | None]]:
    """Every (node type, index name) of an EXPLAIN (FORMAT JSON) plan."""
    found: list[tuple[str, str | None]] = []

    def walk(node: dict[str, Any]) -> None:
        found.append((node["Node Type"], node.get("Index Name")))
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return found


async def search_as_alice(
    runtime: Runtime, store: knowledge.KnowledgeStore, query: np.ndarray, parent: uuid.UUID, top_k: int
) -> tuple[list[knowledge.Hit], list[tuple[str, str | None]]]:
    """Alice's search in her transaction, and the plan of its last statement (the ranking one)."""
    captured: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, parameters: Any, _ctx: Any, _many: bool) -> None:
        captured.append((statement, parameters))

    async with runtime.database.user_transaction(USERS["alice"]) as conn:
        # A test table is small enough that the planner would read it whole; the plan under test is
        # the one it takes on a large table, where the covering index is far cheaper.
        await conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
        await conn.execute(sa.text("SET LOCAL enable_bitmapscan = off"))
        await conn.execute(sa.text("SET LOCAL enable_sort = off"))
        sa.event.listen(runtime.database.tool_engine.sync_engine, "before_cursor_execute", capture)
        try:
            hits = await store.search(
                conn,
                USERS["alice"],
                query.tolist(),
                model=runtime.embedder.model,
                top_k=top_k,
                parent_id=parent,
                source_types=None,
            )
        finally:
            sa.event.remove(runtime.database.tool_engine.sync_engine, "before_cursor_execute", capture)
        statement, parameters = captured[-1]
        plan = (await conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters)).scalar_one()
    return hits, plan_nodes(json.loads(plan) if isinstance(plan, str) else plan)


async def test_a_mid_size_set_is_ranked_by_its_stored_sign_bits_then_exactly(
    runtime: Runtime, admin: sa.Engine, spark: uuid.UUID
) -> None:
    """Issue 4: between exact_search_rows and hamming_search_rows readable chunks, search ranks them
    all by Hamming distance in an index-only scan of the covering index (no full vector read, no
    HNSW walk), re-ranks the best HAMMING_CANDIDATES by exact cosine, and returns exactly the true
    top k, in order. Half the near chunks are not in the graph yet (migration 0007): found alike."""
    n = knowledge.HAMMING_CANDIDATES * 3
    vectors, query = clustered(n, near=60, seed=8)
    ids = insert(admin, spark, vectors, runtime.embedder.model, indexed=lambda i: i % 2 == 0)
    truth = np.argsort(-(vectors @ query), kind="stable")[:10]

    store = knowledge.KnowledgeStore(runtime.policy, exact_search_rows=10, hamming_search_rows=10 * n)
    hits, plan = await search_as_alice(runtime, store, query, spark, top_k=10)

    assert ("Index Only Scan", BITS_INDEX) in plan, repr(plan)
    assert HNSW not in {name for _, name in plan}
    assert [h.id for h in hits] == [ids[i] for i in truth]
    assert [h.similarity for h in hits] == pytest.approx((vectors[truth] @ query).tolist(), abs=1e-5)
    assert any(i % 2 for i in truth), "the true top 10 hold unindexed chunks"


async def test_the_plan_follows_the_size_of_the_readable_set(
    runtime: Runtime, admin: sa.Engine, spark: uuid.UUID
) -> None:
    """Our choice: at most exact_search_rows chunks, the exact scan (no bits index); above
    hamming_search_rows, the HNSW walk; between them, the Hamming plan. Every plan finds the same
    top k here."""
    vectors, query = clustered(300, near=30, seed=9)
    insert(admin, spark, vectors, runtime.embedder.model, indexed=lambda _i: True)
    plans = {
        "exact": knowledge.KnowledgeStore(runtime.policy, exact_search_rows=300, hamming_search_rows=1_000),
        "bits": knowledge.KnowledgeStore(runtime.policy, exact_search_rows=299, hamming_search_rows=300),
        "walk": knowledge.KnowledgeStore(runtime.policy, exact_search_rows=298, hamming_search_rows=298),
    }
    found: dict[str, list[uuid.UUID]] = {}
    used: dict[str, set[str | None]] = {}
    for name, store in plans.items():
        hits, plan = await search_as_alice(runtime, store, query, spark, top_k=5)
        found[name] = [h.id for h in hits]
        used[name] = {index for _, index in plan}
    assert BITS_INDEX not in used["exact"] and HNSW not in used["exact"]
    assert BITS_INDEX in used["bits"] and HNSW not in used["bits"]
    assert HNSW in used["walk"] and BITS_INDEX not in used["walk"]
    assert found["exact"] == found["bits"] == found["walk"] and len(found["exact"]) == 5


async def test_the_stored_bits_are_the_sign_bits_of_the_embedding(
    runtime: Runtime, admin: sa.Engine, spark: uuid.UUID
) -> None:
    """Migration 0008: the column is computed by the database from the vector (bit i set where
    component i is positive), so no writer can store bits that disagree with it."""
    vectors, _ = clustered(3, near=1, seed=10)
    insert(admin, spark, vectors, runtime.embedder.model, indexed=lambda _i: False)
    with admin.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT embedding_bits::text FROM spark_embeddings WHERE spark_id = :s ORDER BY content"),
            {"s": spark},
        ).scalars()
        assert list(stored) == ["".join("1" if x > 0 else "0" for x in v) for v in vectors]


def test_migration_0008_downgrades_and_upgrades_again(pg_admin: Callable[[str], str]) -> None:
    """Our choice (STYLE.md 7): a real downgrade. Down: the column and its covering index are gone;
    up: both again, and existing rows get their bits computed."""
    url = pg_admin(f"rowscope_bits_{uuid.uuid4().hex[:8]}")
    config = migrate.alembic_config(url)
    engine = sa.create_engine(url)

    def shape() -> tuple[int, set[str]]:
        columns, indexes = table_schema(engine, "spark_embeddings")
        return int("embedding_bits" in columns), set(indexes)

    try:
        command.upgrade(config, "head")
        head = shape()
        assert head[0] == 1 and BITS_INDEX in head[1]
        command.downgrade(config, "0007")
        columns, indexes = shape()
        assert columns == 0 and BITS_INDEX not in indexes and HNSW in indexes
        user, spark = uuid.uuid4(), uuid.uuid4()
        with engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO user_profiles (id, email) VALUES (:u, 'bits@example.com')"), {"u": user}
            )
            conn.execute(
                sa.text("INSERT INTO sparks (id, user_id, name) VALUES (:s, :u, 'b')"),
                {"s": spark, "u": user},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO spark_embeddings (spark_id, content, content_hash, source_type, embedding,"
                    " embedding_model) VALUES (:s, 'c', :h, 'manual_entry', :v, 'm')"
                ),
                {"s": spark, "h": "0" * 64, "v": "[" + ",".join(["0.5", "-0.5"] * (DIM // 2)) + "]"},
            )
        command.upgrade(config, "head")
        assert shape() == head
        with engine.connect() as conn:
            bits = conn.execute(sa.text("SELECT embedding_bits::text FROM spark_embeddings")).scalar_one()
        assert bits == "10" * (DIM // 2)
    finally:
        engine.dispose()
