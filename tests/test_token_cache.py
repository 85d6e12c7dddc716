"""The verified-token cache: fast repeat verification, emptied by any revocation at once."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import psycopg
import pytest
import sqlalchemy as sa
from alembic import command

from rowscope.auth import store
from rowscope.auth.token_cache import TokenCache
from rowscope.auth.verifier import RowscopeVerifier
from rowscope.db import accounts, migrate
from rowscope.db.engine import Database, DatabaseUrl
from rowscope.server import demo
from tests.conftest import table_schema

pytestmark = pytest.mark.anyio
RESOURCE = "http://127.0.0.1:1/mcp"


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(DatabaseUrl.parse(database_url), pool_size=2)
    yield db
    await db.dispose()


async def new_token(database: Database) -> str:
    client_id = f"cache-test-{uuid.uuid4()}"
    async with database.service_transaction() as conn:
        await store.save_client(
            conn,
            {
                "client_id": client_id,
                "client_name": "cache test",
                "redirect_uris": ["http://127.0.0.1:9/cb"],
                "grant_types": ["authorization_code"],
                "token_endpoint_auth_method": "none",
                "kind": "registered",
            },
        )
        issued = await store.issue_tokens(
            conn,
            client_id=client_id,
            user_id=demo.CAROL,
            scope="rowscope:read",
            resource=RESOURCE,
            access_ttl=dt.timedelta(hours=1),
            refresh_ttl=dt.timedelta(days=1),
        )
    return issued.access_token


async def test_a_revocation_elsewhere_empties_the_cache_at_once(database: Database, admin: sa.Engine) -> None:
    """Issue 3: only live, unrevoked tokens are accepted, even with verifications cached."""
    cache = TokenCache(database.url.libpq)
    verifier = RowscopeVerifier(database, RESOURCE, cache)
    token = await new_token(database)
    async with anyio.create_task_group() as tasks:
        await tasks.start(cache.listen)
        first = await verifier.verify_token(token)
        assert first is not None and cache.get(store.digest(token)) == first
        with admin.begin() as conn:  # another connection, as another server process would
            conn.execute(
                sa.text("UPDATE oauth_tokens SET revoked_at = now() WHERE access_hash = :h"),
                {"h": store.digest(token)},
            )
        with anyio.fail_after(5):
            while cache.get(store.digest(token)) is not None:  # noqa: ASYNC110 (observed from outside)
                await anyio.sleep(0.01)
        assert await verifier.verify_token(token) is None
        tasks.cancel_scope.cancel()


async def test_an_answer_read_before_a_revocation_is_not_cached(database: Database) -> None:
    """Our choice: a verification that raced a revocation must not leave the old answer behind."""
    cache = TokenCache(database.url.libpq)
    cache.listening = True
    token = await RowscopeVerifier(database, RESOURCE).verify_token(await new_token(database))
    assert token is not None
    generation = cache.generation
    cache.clear()  # a notification arrives while the look-up is in flight
    cache.put("digest", token, generation)
    assert cache.get("digest") is None


async def test_without_its_listener_the_cache_is_bypassed(database: Database) -> None:
    """Our choice: no revocation feed, no caching — every request is verified in the database."""
    cache = TokenCache("postgresql://nobody@/nowhere?host=/nonexistent")
    token = await RowscopeVerifier(database, RESOURCE).verify_token(await new_token(database))
    assert token is not None
    cache.put("digest", token, cache.generation)
    assert cache.get("digest") is None


# What each kind of change to the credential tables sends on the revocation channel (migration
# 0010): bookkeeping updates send nothing, so they no longer empty every process's cache; anything
# a verification reads sends its table's name, even when the value is set to what it was.
BOOKKEEPING = [
    "UPDATE oauth_tokens SET rotated_at = now() WHERE access_hash = :h",
    "UPDATE oauth_tokens SET last_used_at = now() WHERE access_hash = :h",
    "UPDATE oauth_clients SET last_used_at = now() WHERE client_id = :c",
    "UPDATE oauth_clients SET client_name = 'renamed', client_metadata = '{}' WHERE client_id = :c",
    "UPDATE api_keys SET last_used_at = now() WHERE key_hash = :k",
]
REVOKING = [
    ("UPDATE oauth_tokens SET scope = scope WHERE access_hash = :h", "oauth_tokens"),
    ("UPDATE oauth_tokens SET access_expires_at = now() WHERE access_hash = :h", "oauth_tokens"),
    ("UPDATE oauth_clients SET revoked_at = now() WHERE client_id = :c", "oauth_clients"),
    ("UPDATE api_keys SET revoked_at = now() WHERE key_hash = :k", "api_keys"),
    ("UPDATE oauth_tokens SET revoked_at = now() WHERE access_hash = :h", "oauth_tokens"),
    ("DELETE FROM oauth_tokens WHERE access_hash = :h", "oauth_tokens"),
]


def test_only_a_change_a_verification_reads_notifies_a_revocation(
    database_url: str, admin: sa.Engine, make_api_key: Any
) -> None:
    """Our choice (migration 0010): refresh rotations, client bookkeeping and key bookkeeping do not
    empty the caches; every change that could revoke still does, as before."""

    async def issued() -> str:
        database = Database(DatabaseUrl.parse(database_url), pool_size=1)
        try:
            return await new_token(database)
        finally:
            await database.dispose()

    access = anyio.run(issued)
    key = make_api_key("carol@example.com", "test_token_cache notify")
    with admin.connect() as conn:
        client = conn.execute(
            sa.text("SELECT client_id FROM oauth_tokens WHERE access_hash = :h"), {"h": store.digest(access)}
        ).scalar_one()
    names = {"h": store.digest(access), "c": client, "k": accounts.hash_key(key)}
    with psycopg.connect(DatabaseUrl.parse(database_url).libpq, autocommit=True) as listener:
        listener.execute("LISTEN rowscope_revocations")

        def heard(statement: str) -> list[str]:
            """What the channel carried for ``statement``, up to a marker sent after it commits."""
            marker = uuid.uuid4().hex
            with admin.begin() as conn:
                assert conn.execute(sa.text(statement), names).rowcount == 1, statement
            with admin.begin() as conn:
                conn.execute(sa.text("SELECT pg_notify('rowscope_revocations', :m)"), {"m": marker})
            payloads = []
            for note in listener.notifies(timeout=10):
                if note.payload == marker:
                    return payloads
                payloads.append(note.payload)
            raise AssertionError(f"the marker never arrived after {statement}")

        for statement in BOOKKEEPING:
            assert heard(statement) == [], statement
        for statement, table in REVOKING:
            assert heard(statement) == [table], statement


def test_migration_0010_downgrades_and_upgrades_again(pg_admin: Any) -> None:
    """Our choice (STYLE.md 7): a real downgrade. Down: the update triggers fire on any UPDATE, as
    migration 0004 made them; up: only on the verified columns again."""
    url = pg_admin(f"rowscope_notify_{uuid.uuid4().hex[:8]}")
    config = migrate.alembic_config(url)
    engine = sa.create_engine(url)

    def triggers() -> dict[str, str]:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger "
                    "WHERE tgname LIKE 'rowscope_%_revocation' ORDER BY tgname"
                )
            )
            return {name: definition for name, definition in rows}

    try:
        command.upgrade(config, "head")
        head = triggers()
        assert len(head) == 3
        assert "UPDATE OF access_hash, revoked_at" in head["rowscope_oauth_tokens_revocation"]
        assert all(" DELETE " in d and " TRUNCATE " in d for d in head.values())
        command.downgrade(config, "0009")
        down = triggers()
        assert set(down) == set(head)
        assert all(" UPDATE " in d and "UPDATE OF" not in d and " DELETE " in d for d in down.values())
        command.upgrade(config, "head")
        assert triggers() == head
    finally:
        engine.dispose()


async def test_a_key_s_use_is_recorded_at_most_once_a_minute(
    database: Database, admin: sa.Engine, make_api_key: Any
) -> None:
    """Our choice: `keys list` shows when each key was last used (to find forgotten ones), written
    on verification but at most once a minute, so a key in steady use is not a write per request."""
    verifier = RowscopeVerifier(database, RESOURCE)  # no cache: every call verifies in the database
    key = await anyio.to_thread.run_sync(make_api_key, "carol@example.com", "test_token_cache used")
    revoked = await anyio.to_thread.run_sync(
        lambda: make_api_key("carol@example.com", "test_token_cache revoked", revoked=True)
    )

    def used(k: str) -> Any:
        with admin.connect() as conn:
            return conn.execute(
                sa.text("SELECT last_used_at FROM api_keys WHERE key_hash = :h"), {"h": accounts.hash_key(k)}
            ).scalar_one()

    assert used(key) is None
    assert await verifier.verify_token(key) is not None
    first = used(key)
    assert first is not None
    assert await verifier.verify_token(key) is not None
    assert used(key) == first, "a second use within the minute writes nothing"
    with admin.begin() as conn:
        conn.execute(
            sa.text("UPDATE api_keys SET last_used_at = now() - interval '2 minutes' WHERE key_hash = :h"),
            {"h": accounts.hash_key(key)},
        )
    assert await verifier.verify_token(key) is not None
    assert used(key) > first
    assert await verifier.verify_token(revoked) is None
    assert used(revoked) is None, "a refused key is not recorded as used"


async def test_a_token_s_use_is_recorded_at_most_once_every_five_minutes(
    database: Database, admin: sa.Engine
) -> None:
    """Our choice (migration 0013): the connections page says when a connection was last used; the
    verification writes it, but at most once every five minutes per token (a new token counts as
    used when issued), so a token in steady use is not a write per request, nor per minute."""
    verifier = RowscopeVerifier(database, RESOURCE)  # no cache: every call verifies in the database
    token, revoked = await new_token(database), await new_token(database)

    def row(t: str) -> Any:
        with admin.connect() as conn:
            return conn.execute(
                sa.text(
                    "SELECT last_used_at, xmin::text AS version FROM oauth_tokens WHERE access_hash = :h"
                ),
                {"h": store.digest(t)},
            ).one()

    def age(t: str, column: str, minutes: int) -> None:
        with admin.begin() as conn:
            conn.execute(
                sa.text(
                    f"UPDATE oauth_tokens SET {column} = now() - make_interval(mins => :m)"
                    " WHERE access_hash = :h"
                ),
                {"m": minutes, "h": store.digest(t)},
            )

    fresh = row(token)
    assert await verifier.verify_token(token) is not None
    assert row(token) == fresh, "a token issued under five minutes ago counts as used: no write"
    age(token, "created_at", 6)
    before = row(token)
    assert await verifier.verify_token(token) is not None
    first = row(token)
    assert first.last_used_at is not None and first.version != before.version
    assert await verifier.verify_token(token) is not None
    assert row(token) == first, "a second use within five minutes writes nothing (the row is unchanged)"
    age(token, "last_used_at", 4)
    aged = row(token)
    assert await verifier.verify_token(token) is not None
    assert row(token) == aged, "still within five minutes"
    age(token, "last_used_at", 6)
    assert await verifier.verify_token(token) is not None
    assert row(token).last_used_at > aged.last_used_at
    with admin.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE oauth_tokens SET revoked_at = now(), created_at = now() - interval '1 hour' "
                "WHERE access_hash = :h"
            ),
            {"h": store.digest(revoked)},
        )
    assert await verifier.verify_token(revoked) is None
    assert row(revoked).last_used_at is None, "a refused token is not recorded as used"


def test_migration_0013_downgrades_and_upgrades_again(pg_admin: Any) -> None:
    """Our choice (STYLE.md 7): a real downgrade; the column goes and comes back, nothing else moves."""
    url = pg_admin(f"rowscope_last_used_{uuid.uuid4().hex[:8]}")
    config = migrate.alembic_config(url)
    engine = sa.create_engine(url)
    try:
        command.upgrade(config, "head")
        head = table_schema(engine, "oauth_tokens")
        assert "last_used_at" in head[0]
        command.downgrade(config, "0012")
        down = table_schema(engine, "oauth_tokens")
        assert down == (head[0] - {"last_used_at"}, head[1])
        command.upgrade(config, "head")
        assert table_schema(engine, "oauth_tokens") == head
    finally:
        engine.dispose()
