"""The verified-token cache: fast repeat verification, emptied by any revocation at once."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator

import anyio
import pytest
import sqlalchemy as sa

from rowscope.auth import store
from rowscope.auth.token_cache import TokenCache
from rowscope.auth.verifier import RowscopeVerifier
from rowscope.db.engine import Database, DatabaseUrl
from rowscope.server import demo

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
