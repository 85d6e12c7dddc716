"""Engine, connections and the per-user transaction (lock 2's half that lives in Python).

Every tool runs inside :meth:`Database.user_transaction`: one transaction whose first statement
switches to the tool role (no BYPASSRLS) and sets ``rowscope.user_id``, both transaction-local, so
nothing leaks into the next user of a pooled connection and the scheme is safe behind pgbouncer in
transaction mode. With ``?pgbouncer=true`` in the URL psycopg's server-side prepared statements
are turned off as well.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

_SCHEMES = {"postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg_async"}


@dataclass(frozen=True)
class DatabaseUrl:
    """A URL normalised for SQLAlchemy + psycopg 3, with the pgbouncer flag taken out of it."""

    sqlalchemy: str
    pgbouncer: bool

    @classmethod
    def parse(cls, raw: str) -> DatabaseUrl:
        parts = urlsplit(raw)
        if parts.scheme not in _SCHEMES:
            raise ValueError("DATABASE_URL must be a postgresql:// URL")
        query = parse_qsl(parts.query, keep_blank_values=True)
        pgbouncer = any(k == "pgbouncer" and v.lower() in {"1", "true", "yes"} for k, v in query)
        query = [(k, v) for k, v in query if k != "pgbouncer"]
        url = urlunsplit(("postgresql+psycopg", parts.netloc, parts.path, urlencode(query), ""))
        return cls(sqlalchemy=url, pgbouncer=pgbouncer)

    @property
    def libpq(self) -> str:
        """The same URL for psycopg / libpq directly."""
        return "postgresql://" + self.sqlalchemy.split("://", 1)[1]


TOOL_ROLE = "rowscope_tool"  # created by migration 0002; NOLOGIN, NOBYPASSRLS
SWITCH_TO_USER = text("SELECT set_config('role', :role, true), set_config('rowscope.user_id', :uid, true)")


class Database:
    """The process's one connection pool, and the two kinds of transaction rowscope opens."""

    def __init__(self, url: DatabaseUrl, *, pool_size: int = 10) -> None:
        connect_args: dict[str, Any] = {"connect_timeout": 5}
        if url.pgbouncer:
            connect_args["prepare_threshold"] = None
        self.url = url
        self.engine: AsyncEngine = create_async_engine(
            url.sqlalchemy,
            pool_size=pool_size,
            max_overflow=pool_size,
            # No pre-ping (a round trip on every checkout): a connection the database dropped is
            # replaced when a user transaction's first statement finds it dead (below), and a
            # detected disconnect invalidates the rest of the pool at once.
            pool_recycle=1800,
            connect_args=connect_args,
        )

    async def _connect_as(self, user_id: uuid.UUID) -> AsyncConnection:
        """A pooled connection in a transaction already switched to the user. A connection found
        dead by that first statement (the database restarted) is replaced once: nothing has run
        yet, so trying again is safe."""
        for attempt in (1, 2):
            conn = await self.engine.connect()
            try:
                await conn.execute(SWITCH_TO_USER, {"role": TOOL_ROLE, "uid": str(user_id)})
            except DBAPIError as exc:
                await conn.close()
                if attempt == 1 and exc.connection_invalidated:
                    continue
                raise
            return conn
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def user_transaction(self, user_id: uuid.UUID) -> AsyncIterator[AsyncConnection]:
        """A transaction running as the tool role with ``rowscope.user_id`` set to ``user_id``."""
        conn = await self._connect_as(user_id)
        try:
            try:
                yield conn
            except BaseException:
                await conn.rollback()
                raise
            await conn.commit()
        finally:
            await conn.close()

    @asynccontextmanager
    async def service_transaction(self) -> AsyncIterator[AsyncConnection]:
        """A transaction as the connecting role: for rowscope's own tables (keys, users), never tools."""
        async with self.engine.begin() as conn:
            yield conn

    async def dispose(self) -> None:
        await self.engine.dispose()
