"""The read tools' connections: a read is one network write and one round trip, through libpq.

Every read is two statements in one transaction: the switch to the tool role and the user
(``SWITCH_TO_USER``), then the read. They go out together in libpq's pipeline mode with one Sync
after them, on an autocommit connection, so PostgreSQL runs them as one implicit transaction (the
extended protocol ends it at the Sync, not after each statement): the transaction-local switch
holds for the read and is gone with it, exactly as in ``Database.user_transaction``, without a
BEGIN and a COMMIT to send and run. A failing statement aborts the rest and rolls the whole back
at the Sync.

psycopg's cursors in its pipeline mode send each statement as it is executed (a network write
each, and one more for the Sync) and pay for a lock, a generator and a poll per step; for a read
that is most of the client's CPU. So :func:`read` drives the connection's libpq handle itself —
psycopg's own, from psycopg's pool, with psycopg converting the query and its parameters
(``PostgresQuery``) and loading the rows (``Transformer``, in C), and psycopg's errors raised from
the results — and only does the sending and the fetching: every message of the read (prepares of
statements not yet prepared on this connection, the two executions, the Sync) in one write, then
the results until the Sync. Measured interleaved against the psycopg cursors it replaced, on one
connection each: 194 → 128 µs of client CPU and 319 → 263 µs of wall time per read (two runs, the
other 221 → 145 and 314 → 272). The connection is in libpq's pipeline mode only during a read (entering
and leaving it, with nothing queued, sends nothing); between reads it is an ordinary idle psycopg
connection, for the pool to check, reset or close. A read interrupted before its Sync was fetched
(cancelled, or the connection lost) closes the connection, so the pool replaces it rather than
hand out one with results still due.

Statements are prepared per connection, each under a name never used before on it, and the
oldest closed past ``PREPARED_PER_CONNECTION``, only on a connection proven direct
(``db/guard.py``, 3), and each read's switch must report that connection's backend pid; behind a
pooler nothing is prepared and each read sends its statements whole.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import pq
from psycopg._queries import PostgresQuery  # psycopg's own conversion of %(name)s queries
from psycopg.abc import Transformer as AdaptTransformer
from psycopg.adapt import Transformer
from psycopg.errors import error_from_result
from psycopg_pool import AsyncConnectionPool

from rowscope.db.guard import check_switch

PREPARED_PER_CONNECTION = 256  # statements kept prepared on one connection (the oldest closed)
# Whether this libpq sends a Close message for a prepared statement (PQsendClosePrepared, libpq 17;
# psycopg's binary wheel ships a newer one, a system libpq may be older).
CLOSE_MESSAGE = pq.version() >= 170000

_TUPLES = pq.ExecStatus.TUPLES_OK
_SYNC = pq.ExecStatus.PIPELINE_SYNC
_FAILED = (pq.ExecStatus.FATAL_ERROR, pq.ExecStatus.PIPELINE_ABORTED)
_IDLE = pq.TransactionStatus.IDLE


@dataclass(frozen=True)
class Rows:
    """A read's rows as tuples, in the order of the statement's columns, and how to name those
    columns: asked only by :meth:`dicts` (the read tools know their columns)."""

    tuples: list[tuple[Any, ...]]
    names: Callable[[], Sequence[str]]

    def dicts(self) -> list[dict[str, Any]]:
        names = self.names()
        return [dict(zip(names, row, strict=True)) for row in self.tuples]


@dataclass
class _Prepared:
    """The statements prepared on one connection: (query, parameter types) → name."""

    names: OrderedDict[tuple[bytes, tuple[int, ...]], bytes] = field(default_factory=OrderedDict)
    made: int = 0

    def name(self) -> bytes:
        """A name never used before on this connection (so never one a failed round left behind)."""
        self.made += 1
        return b"rowscope_%d" % self.made

    def make_room(self, keys: list[tuple[bytes, tuple[int, ...]]], pg: pq.abc.PGconn) -> None:
        """Mark ``keys`` (this round's statements) used, and queue the close of the least recently
        used others, so that with this round's new ones at most ``PREPARED_PER_CONNECTION`` stay."""
        for key in keys:
            if key in self.names:
                self.names.move_to_end(key)
        new = len({key for key in keys if key not in self.names})
        for _ in range(max(0, min(len(self.names) + new - PREPARED_PER_CONNECTION, len(self.names)))):
            _, name = self.names.popitem(last=False)
            if CLOSE_MESSAGE:
                pg.send_close_prepared(name)
            else:  # libpq before 17 has no Close message to send in a pipeline; the statement does it
                pg.send_query_params(b"DEALLOCATE " + name, None)


class ReadConnection(psycopg.AsyncConnection[Any]):
    """A connection of the read pool: psycopg's, with what :func:`read` keeps on it."""

    # Named apart from psycopg's own attributes (it has a _prepared of its own).
    _rowscope_statements: _Prepared | None = None
    _rowscope_transformer: AdaptTransformer | None = None
    # The backend pid every read's switch must report, where this connection prepares statements
    # (set by the pool's configure step, Database._configure_read; db/guard.py, 3).
    rowscope_pid: int | None = None
    rowscope_checked = False  # guard.inspect has run on it (Database._configure_read)

    def transformer(self) -> AdaptTransformer:
        if self._rowscope_transformer is None:
            self._rowscope_transformer = Transformer(self)
        return self._rowscope_transformer

    def prepared(self) -> _Prepared | None:
        """Its prepared statements; None where nothing is prepared (behind a pooler)."""
        if self.prepare_threshold is None or self.rowscope_pid is None:
            return None
        if self._rowscope_statements is None:
            self._rowscope_statements = _Prepared()
        return self._rowscope_statements


class ReadPool(AsyncConnectionPool[ReadConnection]):
    """psycopg's pool, handing out the connection returned last (LIFO) instead of the one idle the
    longest (FIFO). A read is short, so FIFO walks every call round all the idle connections —
    after a burst of 32 clients, one client's calls each went to another of ten PostgreSQL backends,
    every one cold in the CPU caches of these two shared cores. LIFO keeps the busy few warm (the
    HTTP benchmark's 1- and 32-client rounds, interleaved: 0.74 / 0.81 times the floor against 0.68 /
    0.76) and leaves the rest idle at the other end, which is where the pool shrinks from.
    ``tests/test_isolation.py`` pins the order, since it overrides a method of the pool's own."""

    async def _get_ready_connection(self, timeout: float | None) -> ReadConnection | None:  # noqa: ASYNC109 (the pool's signature)
        if self._pool and (timeout is None or timeout > 0.0):
            conn = self._pool.pop()
            self._nconns_min = min(self._nconns_min, len(self._pool))  # as the pool's own does
            return conn
        return await super()._get_ready_connection(timeout)


async def read(
    conn: ReadConnection, switch: str, switched: Mapping[str, str], sql: str, params: Mapping[str, Any]
) -> Rows:
    """Switch to the user and read: one write, one round trip, one transaction (module docstring).
    ``switch`` and ``sql`` are psycopg queries (``%(name)s`` parameters); ``switched``: the switch's
    values (``engine.switch_values``), its ``uid`` what the switch must answer."""
    pg = conn.pgconn
    pg.enter_pipeline_mode()
    transformer = conn.transformer()
    prepared = conn.prepared()
    fresh: dict[tuple[bytes, tuple[int, ...]], bytes] = {}
    done = False
    try:
        queries = []
        for query, values in ((switch, switched), (sql, params)):
            converted = PostgresQuery(transformer)
            converted.convert(query, values)
            queries.append(converted)
        if prepared is not None:
            prepared.make_room([(q.query, q.types) for q in queries], pg)
        for converted in queries:
            _send(pg, converted, prepared, fresh)
        pg.pipeline_sync()
        await _flush(pg)
        results = await _fetch_to_sync(pg)
        pg.exit_pipeline_mode()  # everything fetched: psycopg's connection again, as the pool expects
        done = True
    finally:
        if not done:  # interrupted with results still due: never handed out again
            await conn.close()
    if pg.transaction_status != _IDLE:  # never expected after the Sync; a guard for the pool
        await conn.execute("ROLLBACK")
    failed = next((r for r in results if r.status in _FAILED), None)
    if failed is not None:
        # A statement prepared in this round may or may not exist now: its name is never used again.
        raise error_from_result(failed, encoding=conn.info.encoding)
    # The switch's answer (prepares and closes answer no rows): this user, on this server process.
    first = next((r for r in results if r.status == _TUPLES), None)
    user = pid = None
    if first is not None and first.ntuples == 1:
        user, pid = first.get_value(0, 1), first.get_value(0, 2)
    try:
        check_switch(
            None if user is None else user.decode(),
            None if pid is None else int(pid),
            switched["uid"],
            conn.rowscope_pid,
        )
    except BaseException:
        await conn.close()  # its prepared statements are not where it thinks: never reused
        raise
    if prepared is not None:
        prepared.names.update(fresh)
    result = results[-1]
    if result.status != _TUPLES:
        return Rows([], list)
    transformer.set_pgresult(result)

    def names() -> list[str]:
        encoding = conn.info.encoding
        return [(result.fname(i) or b"").decode(encoding) for i in range(result.nfields)]

    return Rows(transformer.load_rows(0, result.ntuples, tuple), names)


def _send(
    pg: pq.abc.PGconn,
    query: PostgresQuery,
    prepared: _Prepared | None,
    fresh: dict[tuple[bytes, tuple[int, ...]], bytes],
) -> None:
    """Queue one statement's messages (libpq buffers them in pipeline mode): executed by name when
    prepared on this connection, prepared first when not, sent whole where nothing is prepared.
    ``fresh``: the statements prepared in this round, kept only once it succeeds."""
    params: Sequence[Any] | None = query.params
    if prepared is None:
        pg.send_query_params(query.query, params, param_formats=query.formats, param_types=query.types)
        return
    key = (query.query, query.types)
    name = prepared.names.get(key) or fresh.get(key)
    if name is None:
        name = fresh[key] = prepared.name()
        pg.send_prepare(name, query.query, param_types=query.types)
    pg.send_query_prepared(name, params, param_formats=query.formats)


async def _flush(pg: pq.abc.PGconn) -> None:
    """Write everything queued; the socket is nearly always writable at once."""
    while pg.flush():
        await _ready(pg, write=True)


async def _fetch_to_sync(pg: pq.abc.PGconn) -> list[pq.abc.PGresult]:
    """Every result of the round up to its Sync, waiting for the socket as needed."""
    results: list[pq.abc.PGresult] = []
    while True:
        pg.consume_input()
        ended = False  # a statement's results just ended (libpq says so with one None)
        while not pg.is_busy():
            result = pg.get_result()
            if result is None:
                if ended:  # a second None: nothing more is in libpq's buffer yet
                    break
                ended = True
                continue
            ended = False
            if result.status == _SYNC:
                return results
            results.append(result)
        await _ready(pg, write=False)


async def _ready(pg: pq.abc.PGconn, *, write: bool) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = pg.socket
    watch, unwatch = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    watch(fd, wake)
    try:
        await ready
    finally:
        unwatch(fd)
