"""Issue 12: per-user limits on add_training_content (rowscope/tools/quota.py, migration 0012), through
the MCP SDK client on the real database: new chunks per window and chunks stored, a clear tool error
over either that changes nothing, duplicates free, concurrent adds counted once, a failed add
counting nothing, and each user's records out of the other users' reach (lock 2)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from mcp.client import Client
from pydantic import SecretStr

from rowscope.db.engine import Database, DatabaseUrl
from rowscope.db.knowledge import KnowledgeStore
from rowscope.db.subjects import Caller
from rowscope.embeddings.chunking import chunk_text
from rowscope.server.app import build_mcp, build_runtime
from rowscope.server.runtime import Runtime
from rowscope.server.settings import Settings
from rowscope.tools import quota
from rowscope.tools.errors import ToolFailure
from tests.conftest import USERS, error_text, structured
from tests.fake_openai import Reply, serve_fake_openai

pytestmark = pytest.mark.anyio


def text_of(chunks: int, seed: int) -> str:
    """A text that chunking (1,000 characters, 200 overlap) cuts into exactly ``chunks`` chunks,
    none of them shared with another seed's."""
    words = " ".join(f"w{seed}x{i}" for i in range(chunks * 200))
    text = words[: 800 * (chunks - 1) + 1000]
    assert len(chunk_text(text)) == chunks
    return text


@pytest.fixture
def trainer(admin: sa.Engine) -> Iterator[tuple[uuid.UUID, uuid.UUID]]:
    """A user of its own with a spark of their own (no other test's records in the window), deleted
    after with everything of theirs."""
    user, spark = uuid.uuid4(), uuid.uuid4()
    with admin.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO user_profiles (id, email) VALUES (:u, :e)"),
            {"u": user, "e": f"limits-{user.hex[:12]}@example.com"},
        )
        conn.execute(
            sa.text("INSERT INTO sparks (id, user_id, name) VALUES (:s, :u, 'limits')"),
            {"s": spark, "u": user},
        )
    yield user, spark
    with admin.begin() as conn:
        conn.execute(sa.text("DELETE FROM user_profiles WHERE id = :u"), {"u": user})


def stored(admin: sa.Engine, user: uuid.UUID, spark: uuid.UUID) -> tuple[int, int]:
    """(chunks in the spark, the user's training records)."""
    with admin.connect() as conn:
        chunks = conn.execute(
            sa.text("SELECT count(*) FROM spark_embeddings WHERE spark_id = :s"), {"s": spark}
        ).scalar_one()
        records = conn.execute(
            sa.text("SELECT count(*) FROM training_additions WHERE user_id = :u"), {"u": user}
        ).scalar_one()
    return int(chunks), int(records)


@asynccontextmanager
async def client_with(settings: Settings, database_url: str, user: uuid.UUID) -> AsyncIterator[Client]:
    server = build_mcp(build_runtime(settings, database_url, stdio_user=user))
    async with Client(server) as client:
        yield client


def limits(settings: Settings, *, per_window: int = 0, stored: int = 0) -> Settings:
    return settings.model_copy(
        update={"training_max_chunks": per_window, "training_max_stored_chunks": stored}
    )


async def add(client: Client, spark: uuid.UUID, text: str) -> Any:
    return await client.call_tool("add_training_content", {"spark_id": str(spark), "content": text})


async def test_adds_over_the_allowance_of_the_window_are_refused_and_change_nothing(
    settings: Settings, database_url: str, admin: sa.Engine, trainer: tuple[uuid.UUID, uuid.UUID]
) -> None:
    """Issue 12: at most training_max_chunks new chunks per window; over it a clear tool error that
    says when to try again, and nothing stored or counted. Our choice: duplicates are free."""
    user, spark = trainer
    async with client_with(limits(settings, per_window=5), database_url, user) as client:
        assert structured(await add(client, spark, text_of(3, seed=1)))["chunks_added"] == 3
        refused = error_text(await add(client, spark, text_of(3, seed=2)))
        assert stored(admin, user, spark) == (3, 1)
        again = structured(await add(client, spark, text_of(3, seed=1)))
        assert (again["chunks_added"], again["chunks_skipped_duplicate"]) == (0, 3)
        assert structured(await add(client, spark, text_of(2, seed=3)))["chunks_added"] == 2
        full = error_text(await add(client, spark, text_of(1, seed=4)))
    assert "training limit reached" in refused
    wait = re.search(r"Try again in (\d+) s", refused)
    assert wait is not None and 1 <= int(wait.group(1)) <= 60
    assert "training limit reached" in full
    assert stored(admin, user, spark) == (5, 2)


async def test_a_text_larger_than_the_allowance_is_refused_outright(
    settings: Settings, database_url: str, admin: sa.Engine, trainer: tuple[uuid.UUID, uuid.UUID]
) -> None:
    """Issue 12: a text with more new chunks than a window allows can never pass; the error says to
    add it in parts rather than to wait."""
    user, spark = trainer
    async with client_with(limits(settings, per_window=5), database_url, user) as client:
        refused = error_text(await add(client, spark, text_of(6, seed=1)))
    assert "smaller parts" in refused
    assert stored(admin, user, spark) == (0, 0)


async def test_the_allowance_comes_back_as_the_window_slides(
    settings: Settings, database_url: str, admin: sa.Engine, trainer: tuple[uuid.UUID, uuid.UUID]
) -> None:
    """Issue 12: the window slides: chunks added more than training_window seconds ago no longer
    count. (The records are aged by the test, in place of waiting a minute.)"""
    user, spark = trainer
    async with client_with(limits(settings, per_window=5), database_url, user) as client:
        structured(await add(client, spark, text_of(3, seed=1)))
        error_text(await add(client, spark, text_of(3, seed=2)))
        with admin.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE training_additions SET added_at = added_at - interval '61 s' WHERE user_id = :u"
                ),
                {"u": user},
            )
        assert structured(await add(client, spark, text_of(3, seed=2)))["chunks_added"] == 3


async def test_the_stored_limit_counts_what_is_stored_and_removing_frees_it(
    settings: Settings, database_url: str, admin: sa.Engine, trainer: tuple[uuid.UUID, uuid.UUID]
) -> None:
    """Issue 12: at most training_max_stored_chunks under the items a user added; over it a clear
    tool error that changes nothing; remove_training_content frees the item's chunks at once."""
    user, spark = trainer
    async with client_with(limits(settings, stored=5), database_url, user) as client:
        first = structured(await add(client, spark, text_of(3, seed=1)))
        refused = error_text(await add(client, spark, text_of(3, seed=2)))
        assert stored(admin, user, spark) == (3, 1)
        structured(
            await client.call_tool(
                "remove_training_content", {"spark_id": str(spark), "item_id": first["item_id"]}
            )
        )
        assert structured(await add(client, spark, text_of(3, seed=2)))["chunks_added"] == 3
    assert "storage limit reached" in refused


async def test_removing_does_not_give_back_the_allowance_of_the_window(
    settings: Settings, database_url: str, trainer: tuple[uuid.UUID, uuid.UUID]
) -> None:
    """Our choice: the window counts chunks embedded and added, so adding and removing in a loop is
    limited like adding."""
    user, spark = trainer
    async with client_with(limits(settings, per_window=5), database_url, user) as client:
        first = structured(await add(client, spark, text_of(3, seed=1)))
        structured(
            await client.call_tool(
                "remove_training_content", {"spark_id": str(spark), "item_id": first["item_id"]}
            )
        )
        assert "training limit reached" in error_text(await add(client, spark, text_of(3, seed=2)))


async def test_concurrent_adds_of_one_user_are_counted_one_after_another(
    settings: Settings, database_url: str, admin: sa.Engine, trainer: tuple[uuid.UUID, uuid.UUID]
) -> None:
    """Issue 12: three adds of two chunks sent at once against an allowance of four: exactly two
    pass, and the third is refused, having changed nothing."""
    user, spark = trainer
    results: list[Any] = []
    async with client_with(limits(settings, per_window=4), database_url, user) as client:

        async def one(seed: int) -> None:
            results.append(await add(client, spark, text_of(2, seed=seed)))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tasks:
                for seed in (1, 2, 3):
                    tasks.start_soon(one, seed)
    assert sorted(r.is_error for r in results) == [False, False, True]
    assert stored(admin, user, spark) == (4, 2)


async def test_a_second_check_of_one_user_waits_until_the_first_is_recorded(
    runtime: Runtime, admin: sa.Engine, trainer: tuple[uuid.UUID, uuid.UUID]
) -> None:
    """Our choice: the check and the record of one user's add hold a per-user lock to the end of
    their transaction, so a concurrent add (in any process) counts the first one's chunks; without
    the lock both would see none and pass."""
    user, spark = trainer
    settings = limits(runtime.settings, per_window=4)
    store = KnowledgeStore(runtime.policy)
    outcome: list[str] = []

    async def second() -> None:
        try:
            async with runtime.database.user_transaction(user) as conn:
                await quota.reserve(conn, settings, store, Caller.own(user), spark, uuid.uuid4(), 3)
            outcome.append("recorded")
        except ToolFailure:
            outcome.append("refused")

    def until_the_second_waits_for_the_lock() -> None:
        deadline = time.monotonic() + 10
        with admin.connect() as conn:
            while (
                time.monotonic() < deadline
                and not conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
                    )
                ).scalar_one()
            ):
                time.sleep(0.01)

    with anyio.fail_after(20):
        async with (
            anyio.create_task_group() as tasks,
            runtime.database.user_transaction(user) as first,
        ):
            await quota.reserve(first, settings, store, Caller.own(user), spark, uuid.uuid4(), 3)
            tasks.start_soon(second)
            await anyio.to_thread.run_sync(until_the_second_waits_for_the_lock)
            assert outcome == []
    assert outcome == ["refused"]
    assert stored(admin, user, spark) == (0, 1)


async def test_a_failed_add_counts_against_nothing(
    settings: Settings, database_url: str, admin: sa.Engine, trainer: tuple[uuid.UUID, uuid.UUID]
) -> None:
    """Issue 12 ("changing nothing"): an add whose embedding fails leaves no record, so the whole
    allowance is there for the next try."""
    user, spark = trainer
    text = text_of(4, seed=1)
    with serve_fake_openai() as fake:
        fake.script = [Reply(), Reply(status=400)]  # the first batch embeds, the second is refused
        remote = limits(settings, per_window=4).model_copy(
            update={
                "openai_api_key": SecretStr("sk-test"),
                "openai_base_url": fake.base_url,
                "embedding_batch_size": 2,
            }
        )
        async with client_with(remote, database_url, user) as client:
            assert "400" in error_text(await add(client, spark, text))
    assert stored(admin, user, spark) == (0, 0)
    async with client_with(limits(settings, per_window=4), database_url, user) as client:
        assert structured(await add(client, spark, text))["chunks_added"] == 4


async def test_a_users_training_records_are_out_of_other_users_reach(
    database_url: str, trainer: tuple[uuid.UUID, uuid.UUID], settings: Settings
) -> None:
    """Lock 2 (migration 0012): a tool transaction sees and writes only its own user's records."""
    user, spark = trainer
    async with client_with(limits(settings, per_window=5), database_url, user) as client:
        structured(await add(client, spark, text_of(1, seed=1)))
    database = Database(DatabaseUrl.parse(database_url), pool_size=1)
    try:
        async with database.user_transaction(USERS["bob"]) as conn:
            seen = (
                await conn.execute(
                    sa.text("SELECT count(*) FROM training_additions WHERE user_id <> :bob"),
                    {"bob": USERS["bob"]},
                )
            ).scalar_one()
        assert seen == 0  # bob's own records, from other tests, are his to see
        async with database.service_transaction() as conn:  # the owner: the records are there
            mine = (
                await conn.execute(
                    sa.text("SELECT count(*) FROM training_additions WHERE user_id = :u"), {"u": user}
                )
            ).scalar_one()
        assert mine >= 1
        with pytest.raises(sa.exc.DBAPIError, match="row-level security"):
            async with database.user_transaction(USERS["bob"]) as conn:
                await conn.execute(
                    sa.text(
                        "INSERT INTO training_additions (user_id, parent_id, item_id, chunks) "
                        "VALUES (:u, :s, :s, 1)"
                    ),
                    {"u": user, "s": spark},
                )
        async with database.user_transaction(user) as conn:
            own = (await conn.execute(sa.text("SELECT count(*) FROM training_additions"))).scalar_one()
        assert own == 1
    finally:
        await database.dispose()
