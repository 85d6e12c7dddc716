"""What lock 2 needs of the database, proved before any tool runs and on every new connection.

Row-level security protects a row only when all of this holds, so rowscope refuses to serve
otherwise (fail closed: a clear refusal, never an unguarded read):

1. **The tool connections log in as a role that RLS binds.** Not a superuser, without BYPASSRLS
   and without CREATEROLE, a member of no role that has any of those (``SET ROLE`` would leave
   RLS behind), and able to switch to ``rowscope_tool``. Checked on every new tool connection
   (one round trip when a connection is made, none per read), so a role changed under a running
   server is refused from its next connection on, not just at start.
2. **Every table a tool reads or writes has RLS enabled, and the tool role does not own it**
   (an owner bypasses its table's policies unless RLS is forced). Checked at start.
3. **A statement runs on the server connection that prepared it.** Behind a transaction pooler
   (pgbouncer's ``pool_mode = transaction``, Supabase's pooler on port 6543), server connections
   are handed from client to client between transactions, and a server-side prepared statement is
   executed wherever the next transaction lands: another client's statement, or none. rowscope
   does not rely on the URL saying so (``?pgbouncer=true`` stays as a hint): each new connection
   compares the backend pid the server reports with the one the connection was given at start-up.
   A pooler answers the start-up itself, with a key of its own, so they differ, and such a
   connection prepares nothing. A pooler in statement mode cannot run a transaction at all and is
   refused at start. Each tool transaction's first statement also returns the backend pid, which
   must be the connection's own (``check_switch``), so even a pooler that passed the server's pid
   through could not run a read on another server connection unnoticed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

TOOL_ROLE = "rowscope_tool"  # created by migration 0002; logs in since 0011; NOBYPASSRLS


class LockRefused(RuntimeError):
    """The database is configured so that lock 2 could not hold; the message says what to change."""


# One round trip on each new connection: its backend pid, and what its login role may do.
ROLE_FACTS = """
SELECT pg_backend_pid(), r.rolname, r.rolsuper, r.rolbypassrls, r.rolcreaterole,
       (SELECT string_agg(d.rolname, ', ' ORDER BY d.rolname) FROM pg_roles d
         WHERE (d.rolsuper OR d.rolbypassrls OR d.rolcreaterole) AND d.oid <> r.oid
           AND pg_has_role(r.oid, d.oid, 'MEMBER')),
       EXISTS (SELECT 1 FROM pg_roles t WHERE t.rolname = %(tool)s)
         AND pg_has_role(r.oid, %(tool)s, 'MEMBER')
FROM pg_roles r WHERE r.rolname = session_user
"""


@dataclass(frozen=True)
class ConnectionFacts:
    backend_pid: int  # as the server reports it
    pooled: bool  # the connection's start-up key names another pid: a pooler answered it
    role: str
    too_powerful: str | None  # why lock 2 would not bind this role, or None
    can_switch: bool


def facts_from(row: tuple[Any, ...], startup_pid: int) -> ConnectionFacts:
    pid, role, superuser, bypass, createrole, escalations, can_switch = row
    reasons = [
        text
        for flag, text in (
            (superuser, "is a superuser"),
            (bypass, "has BYPASSRLS"),
            (createrole, "has CREATEROLE"),
            (escalations and not superuser, f"is a member of {escalations}, which can bypass RLS"),
        )
        if flag
    ]
    return ConnectionFacts(
        backend_pid=int(pid),
        pooled=int(pid) != startup_pid,
        role=str(role),
        too_powerful=" and ".join(reasons) or None,
        can_switch=bool(can_switch),
    )


def require_tool_role(facts: ConnectionFacts) -> None:
    """Refuse a tool connection whose login role row-level security would not bind."""
    if facts.too_powerful is not None:
        raise LockRefused(
            f"the tool connections log in as {facts.role!r}, which {facts.too_powerful}: row-level "
            f"security would not hold. Connect them as {TOOL_ROLE!r} (the default; set "
            "ROWSCOPE_TOOL_DATABASE_URL only to give its password or a pooler's user name form)"
        )
    if not facts.can_switch:
        raise LockRefused(
            f"the tool connections log in as {facts.role!r}, which cannot act as {TOOL_ROLE!r}: "
            "run `rowscope migrate`, or grant the role to it"
        )


async def inspect(conn: psycopg.AsyncConnection[Any]) -> ConnectionFacts:
    """The facts of a psycopg connection (the read pool's, the token cache's)."""
    cursor = await conn.execute(ROLE_FACTS, {"tool": TOOL_ROLE}, prepare=False)
    row = await cursor.fetchone()
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        await conn.rollback()
    assert row is not None  # session_user always has a pg_roles row
    return facts_from(tuple(row), conn.info.backend_pid)


def inspect_sync(dbapi_connection: Any) -> ConnectionFacts:
    """The same for a SQLAlchemy (async-adapted) DBAPI connection, from its ``connect`` event,
    which SQLAlchemy runs where the adapter's blocking calls work."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(ROLE_FACTS, {"tool": TOOL_ROLE})
        row = cursor.fetchone()
    finally:
        cursor.close()
    dbapi_connection.rollback()  # the event runs before SQLAlchemy's own transaction handling
    driver: psycopg.AsyncConnection[Any] = dbapi_connection.driver_connection
    return facts_from(tuple(row), driver.info.backend_pid)


def check_switch(user: str | None, pid: int | None, expected_user: str, expected_pid: int | None) -> None:
    """A tool transaction's first statement answered the ``user`` id it set and the backend ``pid``.
    The user must be this request's (the statement that ran was the switch, with this request's
    values); on a connection that prepares statements (``expected_pid`` not None) the pid must be
    the connection's own, or the transaction is running on a server connection whose prepared
    statements are not ours (module docstring, 3). Read together with the rest of the transaction,
    so a mismatch means nothing of it is answered."""
    if user != expected_user or (expected_pid is not None and pid != expected_pid):
        raise PoolerDetected(
            "a tool transaction's first statement did not answer as the switch to this request's "
            "user on this connection's own server connection: a pooler; the connection is closed"
        )


class PoolerDetected(psycopg.OperationalError):
    """A connection turned out to sit behind a transaction pooler mid-use. An OperationalError, so
    the read is retried once on a fresh connection (which the new connection's check then classes as
    pooled) and, failing that, reported as the database being unavailable."""


async def require_lock_two(conn: psycopg.AsyncConnection[Any], tables: Iterable[str]) -> ConnectionFacts:
    """At start, on a tool connection: the role (1), every table's RLS and owner (2), and a pooler's
    mode (3). Raises :class:`LockRefused` with one line naming what to change."""
    try:
        async with conn.transaction():
            await conn.execute("SELECT 1", prepare=False)
            await conn.execute("SELECT 2", prepare=False)
    except psycopg.Error as exc:
        raise statement_mode_refused(exc) from None
    facts = await inspect(conn)
    require_tool_role(facts)
    names = sorted(set(tables))
    cursor = await conn.execute(
        sql.SQL(
            "SELECT name, c.relrowsecurity, c.relforcerowsecurity, "
            "c.oid IS NOT NULL AND pg_has_role(session_user, c.relowner, 'MEMBER') "
            "FROM unnest(%s::text[], %s::text[]) AS t(name, quoted) "
            "LEFT JOIN pg_class c ON c.oid = to_regclass(quoted)"
        ),
        [names, [quoted(name) for name in names]],
        prepare=False,
    )
    for name, rls, forced, owns in await cursor.fetchall():
        if rls is None:
            continue  # absent: the policy's compiler names missing tables itself
        if not rls:
            raise LockRefused(
                f"table {name!r} is in the policy but has no row-level security: ENABLE ROW LEVEL "
                f"SECURITY on it with policies for {TOOL_ROLE!r} (or take it out of the policy)"
            )
        if owns and not forced:
            raise LockRefused(
                f"the tool role {facts.role!r} owns table {name!r}, so its row-level security does "
                "not apply to it: give the table to another owner (or FORCE ROW LEVEL SECURITY)"
            )
    await conn.rollback()
    if facts.pooled:
        log.info(
            "the database is behind a connection pooler (backend pid %d, start-up key %d): "
            "server-side prepared statements are off",
            facts.backend_pid,
            conn.info.backend_pid,
        )
    return facts


def quoted(table: str) -> str:
    """A policy's table name (``auth.users``, ``User``) as SQL names it, each part quoted."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in table.split("."))


def statement_mode_refused(exc: BaseException) -> LockRefused:
    """The refusal for a connection that cannot hold a transaction open (``exc`` is what it said)."""
    return LockRefused(
        "the database connection cannot hold a transaction open: a pooler in statement mode "
        f"(pgbouncer's pool_mode = statement; it said: {first_line(exc)}). rowscope needs "
        "session or transaction pooling, or a direct connection"
    )


def said_statement_mode(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is pgbouncer refusing a transaction block."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, psycopg.Error) and "statement pooling mode" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def first_line(exc: BaseException) -> str:
    """The first line of the driver's or server's message (it never carries a password)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
