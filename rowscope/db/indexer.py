"""The background indexer of the knowledge store: puts chunks that were inserted unindexed into the
approximate-search index.

With the policy's ``indexed_column`` (Spark: ``spark_embeddings.indexed``, migration 0007) the HNSW
index is partial on that flag and ``KnowledgeStore.insert`` writes new chunks with it false, so
adding a document does no graph work. This module sets the flag, which is what inserts a row into
the graph, a batch at a time::

    UPDATE t SET indexed = true
    WHERE id IN (SELECT id FROM t WHERE NOT indexed LIMIT :n FOR UPDATE SKIP LOCKED)

Each batch is its own short transaction as the connecting role (never the tool role, which has no
UPDATE on the table), and changes nothing but the flag. ``SKIP LOCKED`` lets any number of indexers
— the workers of one server, several servers, ``rowscope index`` — drain the same backlog without
waiting on or conflicting with each other. Until a chunk is indexed, search scores it exactly
(``KnowledgeStore.search``), so the backlog costs search time, never results.

A running server wakes its indexer right after ``add_training_content`` commits, and also on a slow
tick, so a backlog another process left behind (a crash, a worker that stopped) is drained too.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
from psycopg import sql

from rowscope.db.engine import Database
from rowscope.db.policy import KnowledgeSpec

log = logging.getLogger(__name__)


class Indexer:
    def __init__(
        self, database: Database, spec: KnowledgeSpec, *, batch_size: int = 200, interval: float = 30.0
    ) -> None:
        if spec.indexed_column is None:
            raise ValueError("the knowledge store has no indexed_column: its chunks are indexed on insert")
        self.database = database
        self.batch_size = batch_size
        self.interval = interval
        table, flag = sql.Identifier(spec.table), sql.Identifier(spec.indexed_column)
        # Rendered once with psycopg's identifier quoting; only the batch size is a parameter.
        self._statement = (
            sql.SQL(
                "UPDATE {table} SET {flag} = true WHERE id IN "
                "(SELECT id FROM {table} WHERE NOT {flag} LIMIT %(n)s FOR UPDATE SKIP LOCKED)"
            )
            .format(table=table, flag=flag)
            .as_string()
        )
        self.passes = 0  # passes of run() that drained the backlog
        self._wake = anyio.Event()
        self._requested = 0  # wake() calls so far
        self._finished = 0  # the wake() count the latest completed pass began after
        self._pass_done = anyio.Event()

    async def index_batch(self) -> int:
        """Index up to ``batch_size`` unindexed chunks that no other indexer holds; how many."""
        async with self.database.service_transaction() as conn:
            raw: Any = (await conn.get_raw_connection()).driver_connection  # psycopg, in this transaction
            async with raw.cursor() as cur:
                await cur.execute(self._statement, {"n": self.batch_size})
                return int(cur.rowcount)

    async def drain(self) -> int:
        """Index batches until none is left (or all that is left is held by other indexers)."""
        total = 0
        while done := await self.index_batch():
            total += done
        return total

    def wake(self) -> None:
        """Ask for a pass soon: chunks committed before this call are indexed by it."""
        self._requested += 1
        self._wake.set()

    async def settled(self) -> None:
        """Return once a pass that began after the latest :meth:`wake` has drained the backlog."""
        target = self._requested
        while self._finished < target:
            await self._pass_done.wait()

    async def wait_passes(self, count: int) -> None:
        """Return once :meth:`run` has completed ``count`` passes in all."""
        while self.passes < count:
            await self._pass_done.wait()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Drain, then sleep until woken or the tick, forever (until cancelled). A batch runs shielded
        from cancellation, so shutting down waits for at most one short transaction instead of
        abandoning a connection mid-statement."""
        task_status.started()
        while True:
            self._wake = anyio.Event()  # a wake() from here on asks for the next pass
            began_after = self._requested
            try:
                while True:
                    with anyio.CancelScope(shield=True):
                        done = await self.index_batch()
                    if not done:
                        break
                    await anyio.lowlevel.checkpoint()  # where a shutdown may stop a long drain
            except Exception:
                # The one place this background task can report anything: a failed pass (the
                # database restarting, a lock timeout) is logged and tried again on the next wake or
                # tick; it must never take the server down with it.
                log.warning(
                    "background indexing failed; retrying in %s s or on the next insert",
                    self.interval,
                    exc_info=True,
                )
            else:
                self._finished = began_after
                self.passes += 1
                self._pass_done.set()
                self._pass_done = anyio.Event()
            with anyio.move_on_after(self.interval):
                await self._wake.wait()
