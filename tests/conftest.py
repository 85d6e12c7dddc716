"""Shared fixtures: one real PostgreSQL with pgvector for the whole run (the embedded one, or the
server in DATABASE_URL), a fresh database migrated with the production migrations, and the demo
data loaded into it. Tests that change data make their own rows or restore what they touched."""

from __future__ import annotations

import os
import secrets
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
import sqlalchemy as sa
from mcp.client import Client

from rowscope.db import accounts, migrate
from rowscope.db.engine import Database, DatabaseUrl
from rowscope.db.models import ApiKey
from rowscope.server import demo
from rowscope.server.app import build_mcp, build_runtime
from rowscope.server.runtime import Runtime
from rowscope.server.settings import Settings

pytest_plugins = ["tests.oauth_server"]

USERS = {"alice": demo.ALICE, "bob": demo.BOB, "carol": demo.CAROL}


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def pg_admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], str]]:
    """A function giving the SQLAlchemy URL of a new, empty database on the test server."""
    external = os.environ.get("DATABASE_URL")
    if external:
        base = DatabaseUrl.parse(external).sqlalchemy
        admin_dsn = base.replace("postgresql+psycopg://", "postgresql://")

        def create(name: str) -> str:
            with psycopg.connect(admin_dsn, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            head, _, query = base.partition("?")
            return f"{head.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")

        yield create
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from rowscope.db.embedded import EmbeddedPostgres

        server = EmbeddedPostgres(
            Path(os.environ.get("ROWSCOPE_TEST_DATA_DIR") or tmp_path_factory.mktemp("pg"))
        )
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def database_url(pg_admin: Callable[[str], str]) -> str:
    """The migrated test database (``alembic upgrade head``, exactly as production), with the demo."""
    url = pg_admin(f"rowscope_test_{secrets.token_hex(4)}")
    migrate.upgrade(url)
    settings = Settings(database_url=url, openai_api_key=None)
    anyio.run(demo.load_demo, build_runtime(settings, url))
    return url


@pytest.fixture(scope="session")
def admin(database_url: str) -> Iterator[sa.Engine]:
    """A superuser connection to the test database: sees every row; tests use it only to state
    what is expected and to set up or clean up, never in place of the code under test."""
    engine = sa.create_engine(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def make_api_key(database_url: str) -> Iterator[Callable[..., str]]:
    """Creates API keys with ``accounts.create_key`` (optionally revoked at once); every key made
    is deleted at the end of the session."""
    made: list[uuid.UUID] = []

    async def in_transaction(work: Callable[[Any], Any]) -> Any:
        database = Database(DatabaseUrl.parse(database_url), pool_size=1)
        try:
            async with database.service_transaction() as conn:
                return await work(conn)
        finally:
            await database.dispose()

    def make(email: str, label: str, *, revoked: bool = False) -> str:
        async def work(conn: Any) -> str:
            key_id, key = await accounts.create_key(conn, email, label)
            made.append(key_id)
            if revoked:
                await accounts.revoke_key(conn, key_id)
            return key

        return str(anyio.run(in_transaction, work))

    yield make

    async def remove(conn: Any) -> None:
        await conn.execute(sa.delete(ApiKey).where(ApiKey.id.in_(made)))

    anyio.run(in_transaction, remove)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=database_url, data_dir=tmp_path, openai_api_key=None)


@pytest.fixture
async def runtime(settings: Settings, database_url: str) -> AsyncIterator[Runtime]:
    rt = build_runtime(settings, database_url)
    await rt.start()
    try:
        yield rt
    finally:
        await rt.close()


@pytest.fixture
def client_as(
    settings: Settings, database_url: str
) -> Callable[[uuid.UUID], AbstractAsyncContextManager[Client]]:
    """An in-process MCP SDK client whose every call runs as the given user."""

    @asynccontextmanager
    async def connect(user: uuid.UUID) -> AsyncIterator[Client]:
        server = build_mcp(build_runtime(settings, database_url, stdio_user=user))
        async with Client(server) as client:
            yield client

    return connect


@contextmanager
def portfolio_rows(admin: sa.Engine, rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """``rows`` inserted into ``portfolio_items`` while the block runs, then deleted again by their
    ``kind``, which the rows share and no other row has."""
    (kind,) = {row["kind"] for row in rows}
    table = sa.table("portfolio_items", *(sa.column(c) for c in rows[0]))
    with admin.begin() as conn:
        conn.execute(sa.insert(table), rows)
    try:
        yield rows
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text("DELETE FROM portfolio_items WHERE kind = :k"), {"k": kind})


def table_schema(engine: sa.Engine, table: str) -> tuple[set[str], dict[str, str]]:
    """A table's column names and its indexes (name -> definition), as the migration tests compare
    them before and after a downgrade and upgrade."""
    with engine.connect() as conn:
        columns = conn.execute(
            sa.text("SELECT column_name FROM information_schema.columns WHERE table_name = :t"), {"t": table}
        ).scalars()
        indexes = conn.execute(
            sa.text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = :t"), {"t": table}
        ).all()
        return set(columns), {name: definition for name, definition in indexes}


def structured(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def error_text(result: Any) -> str:
    assert result.is_error, result.structured_content
    return str(result.content[0].text)
