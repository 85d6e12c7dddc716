"""Engine, connections and the per-user transaction (lock 2's half that lives in Python).

Two kinds of connection, logged in as two roles. Tool transactions (:meth:`Database.user_transaction`
and the read tools' one-round-trip reads) connect as the tool role, ``rowscope_tool`` (no
SUPERUSER, no BYPASSRLS; ``db/guard.py`` proves it on every new connection), and their first
statement sets ``rowscope.user_id`` (and the role, once more), transaction-local, so nothing leaks
into the next user of a pooled connection. Without that statement a tool connection sees no row
at all. rowscope's own tables (accounts, OAuth) are read and written through
:meth:`Database.service_transaction`, as the owning role of ``DATABASE_URL``.

Server-side prepared statements are used only on connections proven to be direct (``db/guard.py``,
3): a connection a pooler answered prepares nothing, whatever the URL says; ``?pgbouncer=true``
turns them off everywhere as before. The service connections never prepare: their statements are
few per request, and the tool transactions' own check of the backend pid does not cover them.
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from sqlalchemy import event, text
from sqlalchemy.engine.interfaces import Compiled
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql import Select

from rowscope.db import guard
from rowscope.db.guard import TOOL_ROLE
from rowscope.db.policy import USER_PARAM
from rowscope.db.reads import ReadConnection, ReadPool, Rows, read
from rowscope.db.subjects import Caller

log = logging.getLogger(__name__)

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

    @property
    def user(self) -> str | None:
        return urlsplit(self.sqlalchemy).username

    def as_role(self, role: str) -> DatabaseUrl:
        """The same server and database, logged in as ``role`` with no password (the embedded
        server trusts its socket; elsewhere libpq's password file or ROWSCOPE_TOOL_DATABASE_URL)."""
        parts = urlsplit(self.sqlalchemy)
        host = parts.netloc.rpartition("@")[2]
        netloc = f"{quote(role, safe='')}@{host}"
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        return DatabaseUrl(sqlalchemy=url, pgbouncer=self.pgbouncer)


# The switch answers the backend pid too: guard.check_switch compares it with the connection's.
SWITCH_TO_USER = text(
    "SELECT set_config('role', :role, true), set_config('rowscope.user_id', :uid, true), "
    "pg_backend_pid(), set_config('rowscope.subject', :subject, true)"
)
COMPILED_CACHE_SIZE = 512  # distinct read shapes kept compiled (the model's filters vary the shape)
SHAPE_CACHE_SIZE = 512  # distinct read shapes (requests less the user and values) kept as ready SQL


@dataclass(frozen=True)
class _Compiled:
    sql: str
    compiled: Compiled
    processors: dict[str, Any]  # parameter name -> the dialect's bind processor for its type


@dataclass(frozen=True)
class _Shaped:
    sql: str
    params: dict[str, Any]  # as sent, the user's (USER_PARAM, if the statement names one) to rebind
    values: frozenset[str]  # the parameters the caller binds anew on every request
    processors: dict[str, Any]  # those of them whose type has a bind processor -> that processor


def switch_values(caller: Caller) -> dict[str, str]:
    """The switch's parameters for a caller."""
    return {"role": TOOL_ROLE, "uid": str(caller.account), "subject": caller.subject}


def as_caller(who: Caller | uuid.UUID) -> Caller:
    """A caller, or an account that is its own subject (Spark's users, rowscope's own jobs)."""
    return who if isinstance(who, Caller) else Caller.own(who)


class Database:
    """The process's one connection pool, and the two kinds of transaction rowscope opens."""

    def __init__(self, url: DatabaseUrl, *, tool_url: DatabaseUrl | None = None, pool_size: int = 10) -> None:
        """``url``: the owning role's (rowscope's own tables); ``tool_url``: where tool transactions
        log in, by default the same server as ``TOOL_ROLE``."""
        self.url = url
        self.tool_url = tool_url or url.as_role(TOOL_ROLE)
        # Set once any connection turned out to be pooled mid-use (guard.check_switch): from then
        # on no connection of this process prepares, whatever its own check says.
        self.pooled = url.pgbouncer or self.tool_url.pgbouncer
        connect_args: dict[str, Any] = {"connect_timeout": 5}
        self._compiled: OrderedDict[Any, _Compiled] = OrderedDict()
        self._shapes: OrderedDict[Hashable, _Shaped] = OrderedDict()
        # The read tools' pool (read_as): psycopg's own, autocommit, so a read is one pipelined
        # write (db/reads.py) with no SQLAlchemy checkout, greenlet hop or reset around it. Opened
        # by the first read.
        self._reads: ReadPool = ReadPool(
            self.tool_url.libpq,
            connection_class=ReadConnection,
            min_size=1,
            max_size=pool_size,
            kwargs=connect_args | {"autocommit": True},
            timeout=10,  # waiting for a free or new connection; then the tool says "unavailable"
            open=False,
        )
        # No pre-ping (a round trip on every checkout): a connection the database dropped is
        # replaced when a transaction's first statement finds it dead (below), and a detected
        # disconnect invalidates the rest of the pool at once.
        pooling = {"pool_size": pool_size, "max_overflow": pool_size, "pool_recycle": 1800}
        self.engine: AsyncEngine = create_async_engine(
            url.sqlalchemy, connect_args=connect_args | {"prepare_threshold": None}, **pooling
        )
        self.tool_engine: AsyncEngine = create_async_engine(
            self.tool_url.sqlalchemy, connect_args=connect_args, **pooling
        )
        event.listen(self.tool_engine.sync_engine, "connect", self._configure_tool)
        dialect = self.engine.dialect
        # The switch as psycopg takes it, for the pipelined reads: one statement text, two forms.
        self._switch_sql = str(SWITCH_TO_USER.compile(dialect=dialect))

    def _classify(self, facts: guard.ConnectionFacts) -> int | None:
        """Refuse a tool connection lock 2 would not bind; the backend pid its transactions must
        report when it may prepare statements, or None when it may not (a pooler answered it)."""
        guard.require_tool_role(facts)
        if facts.pooled:
            self._pooler_seen("a new connection was answered by another process than its server")
        return None if self.pooled else facts.backend_pid

    def _pooler_seen(self, how: str) -> None:
        if not self.pooled:
            log.warning(
                "%s: a connection pooler the database URL does not name (?pgbouncer=true); "
                "server-side prepared statements are off from now on",
                how,
            )
            self.pooled = True

    async def _configure_read(self, conn: ReadConnection) -> None:
        """On a read connection's first use (not in the pool's own configure step, whose failures
        the pool retries until its timeout: a refusal is to be said at once)."""
        conn.rowscope_pid = self._classify(await guard.inspect(conn))
        if conn.rowscope_pid is None:
            conn.prepare_threshold = None
        conn.rowscope_checked = True

    def _configure_tool(self, dbapi_connection: Any, record: Any) -> None:
        pid = record.info["rowscope_pid"] = self._classify(guard.inspect_sync(dbapi_connection))
        if pid is None:
            dbapi_connection.driver_connection.prepare_threshold = None

    async def verify(self, tables: Iterable[str]) -> None:
        """At start: lock 2 holds for these tables on this database, or :class:`guard.LockRefused`."""
        conn = await psycopg.AsyncConnection.connect(self.tool_url.libpq, connect_timeout=5, autocommit=True)
        async with conn:
            facts = await guard.require_lock_two(conn, tables)
        self._classify(facts)

    async def _connect_as(self, caller: Caller) -> AsyncConnection:
        """A pooled tool connection in a transaction already switched to the user. A connection
        found dead by that first statement (the database restarted), or on another server
        connection than its own (a pooler, guard.check_switch), is replaced once: nothing has run
        yet, so trying again is safe."""
        for attempt in (1, 2):
            conn = await self.tool_engine.connect()
            try:
                switched = await conn.execute(SWITCH_TO_USER, switch_values(caller))
                _, user, pid, _ = switched.one()
                guard.check_switch(user, pid, str(caller.account), conn.info.get("rowscope_pid"))
            except guard.PoolerDetected:
                self._pooler_seen("a tool transaction ran on another server connection than its own")
                await conn.invalidate()
                await conn.close()
                if attempt == 1:
                    continue
                raise
            except DBAPIError as exc:
                await conn.close()
                if attempt == 1 and exc.connection_invalidated:
                    continue
                raise
            return conn
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def user_transaction(self, who: Caller | uuid.UUID) -> AsyncIterator[AsyncConnection]:
        """A transaction logged in as the tool role with ``rowscope.user_id`` and
        ``rowscope.subject`` set to the caller's (``db/subjects.py``)."""
        conn = await self._connect_as(as_caller(who))
        try:
            try:
                yield conn
            except BaseException:
                await conn.rollback()
                raise
            await conn.commit()
        finally:
            await conn.close()

    async def read_as(self, who: Caller | uuid.UUID, statement: Select[Any]) -> list[dict[str, Any]]:
        """The rows of one read statement, run in a user transaction exactly as
        :meth:`user_transaction` runs it (tool role, ``rowscope.user_id``, both transaction-local),
        but sent in one network write and one round trip: the switch and the statement go out
        together in libpq's pipeline mode as one implicit transaction (``db/reads.py``), instead of
        four round trips through SQLAlchemy's async layers. The read tools take it through
        :meth:`read_shaped`; ``benchmarks: bench/toolcall.py``.

        The statement is compiled by SQLAlchemy (every value a bound parameter, passed through its
        type's bind processor as SQLAlchemy would); the rare statement :meth:`_compile` cannot serve
        runs through :meth:`user_transaction` instead.
        """
        sql, params, _ = self._compile(statement)
        return (await self._read(as_caller(who), statement, sql, params)).dicts()

    async def read_shaped(
        self,
        who: Caller | uuid.UUID,
        shape: Hashable | None,
        build: Callable[[], Select[Any]],
        values: Mapping[str, Any] | None = None,
    ) -> list[tuple[Any, ...]]:
        """:meth:`read_as` for a read tool's request, keyed by its ``shape``: everything that decides
        its statement's SQL text, which is neither the user nor the ``values`` (below). The first
        request of a shape builds the statement (``build()``, for this user) and compiles it; a later
        one of the same shape, for any user, skips both and reuses that SQL and its parameters with
        the user and the values rebound. That is sound because the policy names the user
        in one parameter and nowhere else (``USER_PARAM``), which is checked here when a shape is
        first kept; and lock 2 holds regardless: the transaction is switched to ``user_id`` and
        row-level security checks every row against it. ``shape=None``: build every time.

        ``values``: parameters the statement names (``bindparam`` by these names) that are bound anew
        on every request, each through its type's bind processor as :meth:`_compile` binds it; the
        shape then need not hold them, only what decides the SQL text (the read tools' filter
        structure, ``db/filters.py``), so requests that differ only in these values share a shape.
        ``build()`` gives the statement with this request's values; a kept shape is only ever asked
        for with the same names.

        The rows come as tuples, in the order of the statement's columns: the caller built the
        statement, so it knows them, and psycopg makes each row in C, where a dict per row
        (``read_as``) costs a Python call per row."""
        caller = as_caller(who)
        values = values or {}
        entry = self._shapes.get(shape) if shape is not None else None
        if entry is None:
            statement = build()
            sql, params, processors = self._compile(statement)
            user = caller.subject
            if params.get(USER_PARAM, user) != user:
                raise RuntimeError("a read statement names another user than the one it runs as")
            # Not kept: no shape, a statement _compile cannot serve, or the user rendered into the SQL.
            if sql is None or shape is None or (USER_PARAM not in params and user in sql):
                return (await self._read(caller, statement, sql, params)).tuples
            if USER_PARAM in values or not values.keys() <= params.keys():
                raise RuntimeError("a read's values must be parameters of its statement, not the user")
            processing = {name: process for name, process in processors.items() if name in values}
            entry = self._shapes[shape] = _Shaped(sql, params, frozenset(values), processing)
            if len(self._shapes) > SHAPE_CACHE_SIZE:
                del self._shapes[next(iter(self._shapes))]
        else:
            self._shapes.move_to_end(shape)
            if values.keys() != entry.values:
                raise RuntimeError("a kept read shape was asked for with other parameters")
        params = entry.params
        if values or USER_PARAM in params:
            params = {**params, **values}
            for name, process in entry.processors.items():
                params[name] = process(params[name])
            if USER_PARAM in params:
                params[USER_PARAM] = caller.subject
        return (await self._run(caller, entry.sql, params)).tuples

    async def _read(
        self, caller: Caller, statement: Select[Any], sql: str | None, params: dict[str, Any]
    ) -> Rows:
        """Run ``statement`` as compiled by :meth:`_compile`: pipelined, or, when ``sql`` is None,
        through :meth:`user_transaction`."""
        if sql is None:
            async with self.user_transaction(caller) as conn:
                result = await conn.execute(statement)
                names = list(result.keys())
                return Rows([tuple(row) for row in result], lambda: names)
        return await self._run(caller, sql, params)

    async def _run(self, caller: Caller, sql: str, params: dict[str, Any]) -> Rows:
        if self._reads.closed:
            await self._reads.open()  # the first read of the process opens the pool
        for attempt in (1, 2):
            # getconn/putconn rather than connection(), which also enters the connection's own
            # context: a commit() (or rollback()) with nothing to do on an autocommit connection
            # read() leaves idle, yet a measurable share of a read's CPU. putconn() still rolls
            # back, or discards and replaces, a connection returned in a transaction, broken or closed.
            raw = await self._reads.getconn()
            try:
                if not raw.rowscope_checked:
                    await self._configure_read(raw)
                return await read(raw, self._switch_sql, switch_values(caller), sql, params)
            except guard.LockRefused:
                await raw.close()  # refused: the pool replaces it, and the next one is checked again
                raise
            except guard.PoolerDetected:  # read() closed the connection; no new one prepares
                self._pooler_seen("a read ran on another server connection than its own")
                if attempt == 2:
                    raise
            except psycopg.OperationalError:
                if attempt == 2:
                    raise
            finally:
                await self._reads.putconn(raw)
            # A connection found dead (the database restarted) is discarded by the pool, and
            # check() discards the other dead idle ones; as in _connect_as, nothing was read
            # yet, so one fresh connection may try again.
            await self._reads.check()
        raise AssertionError("unreachable")

    def _compile(self, statement: Select[Any]) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
        """The SQL and parameters psycopg is sent for ``statement``, each value passed through its
        type's bind processor for this dialect exactly as SQLAlchemy's own execution would, and those
        processors by parameter name (for :meth:`read_shaped` to bind new values alike); ``(None,
        {}, {})`` for the rare statement this cannot serve (an IN list of a processed type). Compiled SQL
        is kept in a small LRU keyed by SQLAlchemy's cache key — the statement's shape without its
        values, the key SQLAlchemy's own compiled cache uses — so a repeated shape is compiled once."""
        dialect = self.engine.dialect
        key = statement._generate_cache_key()
        entry = self._compiled.get(key.key) if key is not None else None
        if entry is None:
            compiled = statement.compile(dialect=dialect, cache_key=key)
            processors = {
                name: process
                for bind, name in compiled.bind_names.items()
                if (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
            }
            if compiled.post_compile_params or key is None:
                if processors:
                    return None, {}, {}
                # An IN list expands to one placeholder per value: compiled for these values only.
                once = statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
                return str(once), dict(once.params), {}
            entry = _Compiled(str(compiled), compiled, processors)
            self._compiled[key.key] = entry
            if len(self._compiled) > COMPILED_CACHE_SIZE:
                del self._compiled[next(iter(self._compiled))]
        else:
            self._compiled.move_to_end(key.key)  # type: ignore[union-attr]
        assert key is not None
        params = dict(entry.compiled.construct_params(extracted_parameters=key.bindparams) or {})
        for name, process in entry.processors.items():
            params[name] = process(params[name])
        return entry.sql, params, entry.processors

    @asynccontextmanager
    async def service_transaction(self) -> AsyncIterator[AsyncConnection]:
        """A transaction as the connecting role: for rowscope's own tables (keys, users), never tools."""
        async with self.engine.begin() as conn:
            yield conn

    async def dispose(self) -> None:
        await self._reads.close()
        await self.tool_engine.dispose()
        await self.engine.dispose()
