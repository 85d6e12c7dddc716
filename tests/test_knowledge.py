"""Training and retrieval end to end through the MCP SDK client (in process), on the real database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from mcp.client import Client
from pydantic import SecretStr

from rowscope.db import knowledge
from rowscope.server import demo
from rowscope.server.app import build_mcp, build_runtime
from rowscope.server.settings import Settings
from tests.conftest import USERS, error_text, structured
from tests.fake_openai import Reply, serve_fake_openai

pytestmark = pytest.mark.anyio

ALICE_COACH = demo._id("spark-alice-coach")  # alice owns it
STUDIO_VOICE = demo._id("spark-studio-voice")  # alice's, shared with the team (bob reads it)
BOB_RESEARCH = demo._id("spark-bob-research")  # bob's; alice is an editor member
CAROL_GARDEN = demo._id("spark-carol-garden")  # carol's; bob is a viewer member

PARAGRAPH = (
    "Field notes on espresso extraction. A finer grind slows the flow and raises bitterness; a coarser "
    "grind speeds it up and tastes sour. Keep the dose at eighteen grams and aim for thirty seconds. "
)


def long_text(words: int, seed: int) -> str:
    vocabulary = ["grind", "dose", "crema", "tamp", "basket", "brew", "ratio", "water", "bloom", "roast"]
    return " ".join(f"{vocabulary[(i * 7 + seed) % 10]}{(i * 31 + seed) % 97}" for i in range(words))


@pytest.fixture
def engine(admin: sa.Engine) -> sa.Engine:
    return admin


def chunk_count(engine: sa.Engine, spark: uuid.UUID) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT count(*) FROM spark_embeddings WHERE spark_id = :s"), {"s": spark}
            ).scalar_one()
        )


@asynccontextmanager
async def client_with(settings: Settings, database_url: str, user: uuid.UUID) -> AsyncIterator[Client]:
    server = build_mcp(build_runtime(settings, database_url, stdio_user=user))
    async with Client(server) as client:
        yield client


async def test_added_content_is_found_by_search_and_removed_again(client_as: Any, engine: sa.Engine) -> None:
    """Mission: add training content, retrieve it, and remove it by the returned item id."""
    before = chunk_count(engine, ALICE_COACH)
    async with client_as(USERS["alice"]) as client:
        added = structured(
            await client.call_tool(
                "add_training_content",
                {"spark_id": str(ALICE_COACH), "content": PARAGRAPH, "title": "Espresso notes"},
            )
        )
        assert (added["chunks_total"], added["chunks_added"], added["chunks_skipped_duplicate"]) == (1, 1, 0)
        found = structured(
            await client.call_tool(
                "search_knowledge", {"query": "how fine should the espresso grind be", "top_k": 3}
            )
        )
        assert found["hits"][0]["source_id"] == added["item_id"]
        assert found["hits"][0]["title"] == "Espresso notes"
        removed = structured(
            await client.call_tool(
                "remove_training_content", {"spark_id": str(ALICE_COACH), "item_id": added["item_id"]}
            )
        )
        assert removed["chunks_removed"] == 1
        again = await client.call_tool(
            "remove_training_content", {"spark_id": str(ALICE_COACH), "item_id": added["item_id"]}
        )
        assert "no training item" in error_text(again)
    assert chunk_count(engine, ALICE_COACH) == before


async def test_adding_the_same_text_twice_adds_nothing_the_second_time(
    client_as: Any, engine: sa.Engine
) -> None:
    """Seed 000: SHA-256 dedup with ON CONFLICT DO NOTHING; our choice: the item id is stable too."""
    text = long_text(900, seed=1)  # several overlapping chunks
    async with client_as(USERS["alice"]) as client:
        first = structured(
            await client.call_tool("add_training_content", {"spark_id": str(ALICE_COACH), "content": text})
        )
        second = structured(
            await client.call_tool("add_training_content", {"spark_id": str(ALICE_COACH), "content": text})
        )
        assert first["chunks_total"] > 3
        assert first["chunks_added"] == first["chunks_total"]
        assert second["item_id"] == first["item_id"]
        assert (second["chunks_added"], second["chunks_skipped_duplicate"]) == (0, first["chunks_total"])
        await client.call_tool(
            "remove_training_content", {"spark_id": str(ALICE_COACH), "item_id": first["item_id"]}
        )


async def test_repeated_chunks_inside_one_text_are_stored_once(client_as: Any) -> None:
    """Seed 000: dedup is per spark and content hash, so a chunk repeated within a text is one row."""
    block = "A" * 800  # every window of this text is the same 1000 characters
    async with client_as(USERS["alice"]) as client:
        added = structured(
            await client.call_tool(
                "add_training_content", {"spark_id": str(ALICE_COACH), "content": block * 5}
            )
        )
        await client.call_tool(
            "remove_training_content", {"spark_id": str(ALICE_COACH), "item_id": added["item_id"]}
        )
    assert added["chunks_total"] == added["chunks_added"] == 2  # "A"*1000 and the shorter tail


@pytest.mark.parametrize(
    ("user", "spark", "expected"),
    [
        pytest.param("bob", CAROL_GARDEN, "read-only", id="viewer-member-may-not-write"),
        pytest.param("bob", STUDIO_VOICE, "read-only", id="team-reader-may-not-write"),
        pytest.param("carol", ALICE_COACH, "no spark", id="stranger-sees-no-spark"),
        pytest.param("alice", uuid.UUID(int=7), "no spark", id="missing-spark"),
    ],
)
async def test_training_a_spark_without_write_access_is_refused_and_changes_nothing(
    client_as: Any, engine: sa.Engine, user: str, spark: uuid.UUID, expected: str
) -> None:
    """Our choice (Spark access): only the owner and editor members train a spark; strangers learn nothing."""
    before = chunk_count(engine, spark)
    async with client_as(USERS[user]) as client:
        result = await client.call_tool(
            "add_training_content", {"spark_id": str(spark), "content": PARAGRAPH}
        )
        removal = await client.call_tool(
            "remove_training_content", {"spark_id": str(spark), "item_id": str(spark)}
        )
    assert expected in error_text(result)
    assert expected in error_text(removal)
    assert chunk_count(engine, spark) == before


async def test_an_editor_member_may_train_the_spark(client_as: Any, engine: sa.Engine) -> None:
    """Our choice (Spark access): members with the editor role may add and remove content."""
    async with client_as(USERS["alice"]) as client:
        added = structured(
            await client.call_tool(
                "add_training_content", {"spark_id": str(BOB_RESEARCH), "content": PARAGRAPH}
            )
        )
        structured(
            await client.call_tool(
                "remove_training_content", {"spark_id": str(BOB_RESEARCH), "item_id": added["item_id"]}
            )
        )
    assert added["chunks_added"] == 1


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        pytest.param({"content": ""}, "content", id="empty"),
        pytest.param({"content": "   \n\t "}, "empty", id="whitespace-only"),
        pytest.param({"content": "x" * 1001}, "limit", id="over-the-configured-limit"),
        pytest.param({"content": "a\x00b"}, "NUL", id="nul-character"),
        pytest.param({"content": "ok", "spark_id": "not-a-uuid"}, "spark_id", id="malformed-spark-id"),
        pytest.param({"content": "ok", "source_type": "bogus"}, "source_type", id="unknown-source-type"),
    ],
)
async def test_bad_training_input_is_a_clear_error(
    settings: Settings, database_url: str, engine: sa.Engine, arguments: dict[str, Any], expected: str
) -> None:
    """Our choice: every bad input is refused with a message naming the problem, and nothing is stored."""
    small = settings.model_copy(update={"max_content_chars": 1000})
    before = chunk_count(engine, ALICE_COACH)
    async with client_with(small, database_url, USERS["alice"]) as client:
        result = await client.call_tool("add_training_content", {"spark_id": str(ALICE_COACH), **arguments})
    assert expected in error_text(result)
    assert chunk_count(engine, ALICE_COACH) == before


async def test_an_embedder_failure_midway_adds_nothing(
    settings: Settings, database_url: str, engine: sa.Engine
) -> None:
    """Issue 2: chunks are embedded before the one insert transaction, so a failing batch stores nothing."""
    with serve_fake_openai() as fake:
        fake.script = [Reply(), Reply(status=400)]  # the first batch embeds, the second is refused
        remote = settings.model_copy(
            update={
                "openai_api_key": SecretStr("sk-test"),
                "openai_base_url": fake.base_url,
                "embedding_batch_size": 2,
            }
        )
        before = chunk_count(engine, ALICE_COACH)
        async with client_with(remote, database_url, USERS["alice"]) as client:
            result = await client.call_tool(
                "add_training_content", {"spark_id": str(ALICE_COACH), "content": long_text(800, seed=2)}
            )
        assert "400" in error_text(result)
        assert len(fake.requests) == 2
    assert chunk_count(engine, ALICE_COACH) == before


async def test_large_content_reports_progress_per_embedding_batch(
    settings: Settings, database_url: str
) -> None:
    """Issue 2: progress notifications for large content, one per batch, ending at the total."""
    updates: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, total))

    small_batches = settings.model_copy(update={"embedding_batch_size": 3})
    async with client_with(small_batches, database_url, USERS["alice"]) as client:
        result = await client.call_tool(
            "add_training_content",
            {"spark_id": str(ALICE_COACH), "content": long_text(1500, seed=3)},
            progress_callback=on_progress,
        )
        added = structured(result)
        await client.call_tool(
            "remove_training_content", {"spark_id": str(ALICE_COACH), "item_id": added["item_id"]}
        )
    total = added["chunks_added"]
    assert total > 3
    assert updates[-1] == (total, total)
    assert [p for p, _ in updates] == sorted(p for p, _ in updates)
    assert len(updates) == -(-total // 3)


async def test_search_covers_exactly_the_sparks_the_user_may_read(client_as: Any) -> None:
    """Seed 000 Spark Access: chunks of owned, member and team-shared sparks; nobody else's."""
    readable = {
        "alice": {ALICE_COACH, STUDIO_VOICE, BOB_RESEARCH},
        "bob": {STUDIO_VOICE, BOB_RESEARCH, demo._id("spark-bob-private"), CAROL_GARDEN},
        "carol": {CAROL_GARDEN},
    }
    for name, sparks in readable.items():
        async with client_as(USERS[name]) as client:
            hits = structured(await client.call_tool("search_knowledge", {"query": "notes", "top_k": 50}))[
                "hits"
            ]
        assert {uuid.UUID(h["spark_id"]) for h in hits} == sparks, name


async def test_search_filters_by_spark_source_type_and_similarity(client_as: Any) -> None:
    """Issue 2: optional spark, source-type and minimum-similarity filters narrow the hits."""
    async with client_as(USERS["bob"]) as client:
        only_garden = structured(
            await client.call_tool(
                "search_knowledge", {"query": "tomatoes", "spark_id": str(CAROL_GARDEN), "top_k": 10}
            )
        )["hits"]
        no_chat = structured(
            await client.call_tool("search_knowledge", {"query": "tomatoes", "source_types": ["chat"]})
        )["hits"]
        strict = structured(
            await client.call_tool("search_knowledge", {"query": "tomatoes", "min_similarity": 0.99})
        )["hits"]
        ranked = structured(
            await client.call_tool("search_knowledge", {"query": "when do tomatoes get planted"})
        )
    assert only_garden and {h["spark_id"] for h in only_garden} == {str(CAROL_GARDEN)}
    assert no_chat == []
    assert strict == []
    assert "Tomatoes" in ranked["hits"][0]["content"]
    similarities = [h["similarity"] for h in ranked["hits"]]
    assert similarities == sorted(similarities, reverse=True)


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        pytest.param({"query": "x", "spark_id": str(CAROL_GARDEN)}, "no spark", id="unreadable-spark"),
        pytest.param({"query": ""}, "query", id="empty-query"),
        pytest.param({"query": "x", "top_k": 0}, "top_k", id="top-k-zero"),
        pytest.param({"query": "x", "top_k": 51}, "top_k", id="top-k-over-50"),
        pytest.param({"query": "x", "spark_id": "12"}, "spark_id", id="malformed-spark-id"),
    ],
)
async def test_bad_search_input_is_a_clear_error(
    client_as: Any, arguments: dict[str, Any], expected: str
) -> None:
    """Our choice: a clear error naming the argument; an unreadable spark is indistinguishable from none."""
    async with client_as(USERS["alice"]) as client:
        result = await client.call_tool("search_knowledge", arguments)
    assert expected in error_text(result)


async def test_search_ignores_chunks_of_another_embedding_model(
    client_as: Any, runtime: Any, engine: sa.Engine
) -> None:
    """Architecture: vectors of different models are not comparable, so only the active model's count."""
    text = "Zanzibar marmalade protocol for the quarterly offsite."
    (vector,) = await runtime.embedder.embed([text])
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO spark_embeddings (spark_id, content, content_hash, source_type, source_id,"
                " embedding, embedding_model)"
                " VALUES (:s, :c, :h, 'knowledge', 'other-model', :v, 'other:model')"
            ),
            {"s": ALICE_COACH, "c": text, "h": "f" * 64, "v": str(vector)},
        )
    try:
        async with client_as(USERS["alice"]) as client:
            hits = structured(await client.call_tool("search_knowledge", {"query": text, "top_k": 50}))[
                "hits"
            ]
        assert text not in [h["content"] for h in hits]
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM spark_embeddings WHERE source_id = 'other-model'"))


async def test_large_readable_sets_search_the_sign_bit_index_and_rerank_exactly(runtime: Any) -> None:
    """Issue 4: above EXACT_SEARCH_ROWS readable chunks, search walks the HNSW index over the sign
    bits (migration 0006: its ORDER BY is the index's expression) and re-ranks the candidates by
    exact cosine, so it finds what the exact scan finds, in the same order."""
    exact_store = knowledge.KnowledgeStore(runtime.policy)
    walking_store = knowledge.KnowledgeStore(runtime.policy, exact_search_rows=0, hamming_search_rows=0)
    (vector,) = await runtime.embedder.embed(["when do tomatoes get planted"])
    index = "ix_spark_embeddings_embedding_bq_hnsw"

    async def search(store: knowledge.KnowledgeStore) -> tuple[list[Any], int]:
        async with runtime.database.user_transaction(USERS["bob"]) as conn:
            # The demo is tiny, so the planner would rather sort it: take the index whenever one
            # can serve the ORDER BY at all.
            await conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
            await conn.execute(sa.text("SET LOCAL enable_sort = off"))
            hits = await store.search(
                conn,
                USERS["bob"],
                vector,
                model=runtime.embedder.model,
                top_k=5,
                parent_id=None,
                source_types=None,
            )
            scans = (
                await conn.execute(sa.text(f"SELECT pg_stat_get_xact_numscans('{index}'::regclass)"))
            ).scalar_one()
        return hits, int(scans)

    exact, exact_scans = await search(exact_store)
    approximate, approximate_scans = await search(walking_store)
    assert (exact_scans, approximate_scans) == (0, 1)
    assert exact and [h.id for h in approximate] == [h.id for h in exact]
    assert [h.similarity for h in approximate] == pytest.approx([h.similarity for h in exact])


async def test_list_sparks_says_which_sparks_the_user_may_train(client_as: Any) -> None:
    """Seed 000 Spark Access, with our write rule: owner or editor member."""
    expected = {
        "alice": {
            "Alice's Writing Coach": True,
            "Studio Brand Voice": True,
            "Bob's Research Assistant": True,
        },
        "bob": {
            "Studio Brand Voice": False,
            "Bob's Research Assistant": True,
            "Bob's Private Journal": True,
            "Carol's Garden Planner": False,
        },
        "carol": {"Carol's Garden Planner": True},
    }
    for name, sparks in expected.items():
        async with client_as(USERS[name]) as client:
            listed = structured(await client.call_tool("list_sparks", {}))["sparks"]
        assert {s["name"]: s["can_write"] for s in listed} == sparks, name
