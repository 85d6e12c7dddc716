"""How much one user may add with ``add_training_content``: at most ``training_max_chunks`` new chunks
within any ``training_window`` seconds (what bounds the embedding work and spend one user causes),
and at most ``training_max_stored_chunks`` stored under the items the user added (what bounds the
storage). Chunks a spark already has are free: they are neither embedded nor stored again. Either
limit at 0 is no limit.

An add over a limit fails before anything is embedded, with a message that says which limit and
when to try again, and changes nothing. An add within them is recorded (``training_additions``,
migration 0012) in the transaction that checked it, before it embeds, under a per-user advisory
lock: concurrent adds of one user, in any process, cannot all see the same count. The record is
settled to the chunks actually added in the transaction that inserts them, or deleted when the add
fails; a process that dies between the two leaves it counted, on the safe side, until it ages out
of the window.

The stored count is not kept but counted: the chunks, as the user's transaction reads them, stored
under the (collection, item) pairs of the user's records (their parent ids kept as text, for a
collection id of any type; ``KnowledgeStore.count_items`` counts in the store's own table, or, for a
store whose bookkeeping is in rowscope's side table, the side rows whose chunk is still there).
Removing an item frees its chunks at once (another user's removal too, and a collection's deletion
by the application); it does not give back the allowance of the window, so adding and removing in a
loop is limited like adding. Adds of one user
running at the same moment do not count against each other's stored limit, so that limit can be
passed by at most what those adds bring (each of them within the window's allowance).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from sqlalchemy import Integer, String, cast, delete, exists, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from rowscope.db.engine import Database
from rowscope.db.knowledge import KnowledgeStore
from rowscope.db.models import TrainingAddition
from rowscope.db.subjects import Caller
from rowscope.server.settings import Settings
from rowscope.tools.errors import ToolFailure

log = logging.getLogger(__name__)

# The first key of pg_advisory_xact_lock(int, int): the user's training lock, apart from the
# sign-in throttle's lock spaces (auth/throttle.py).
LOCK_SPACE = 0x5A0C_0010
# Records of removed items, older than the window, deleted per add: bounds the work of one add.
PRUNE_BATCH = 1000


def _per(seconds: int) -> str:
    return "per minute" if seconds == 60 else f"per {seconds} s"


async def reserve(
    conn: AsyncConnection,
    settings: Settings,
    store: KnowledgeStore,
    caller: Caller,
    parent_id: Any,
    item_id: uuid.UUID,
    chunks: int,
) -> uuid.UUID:
    """Record ``chunks`` new chunks the user is about to add, or raise ToolFailure (recording nothing)
    when that would pass a limit. Returns the record's id, for :func:`settle` or :func:`release`."""
    user = caller.account
    window = dt.timedelta(seconds=settings.training_window)
    await conn.execute(
        select(func.pg_advisory_xact_lock(cast(LOCK_SPACE, Integer), func.hashtext(str(user))))
    )
    rate = settings.training_max_chunks
    if rate:
        per = _per(settings.training_window)
        if chunks > rate:
            raise ToolFailure(
                f"this text has {chunks} new chunks, more than the {rate} a user may add {per}; "
                "add it in smaller parts. Nothing was changed."
            )
        recent = (
            await conn.execute(
                select(
                    TrainingAddition.chunks,
                    func.extract("epoch", TrainingAddition.added_at + window - func.now()),
                )
                .where(TrainingAddition.user_id == user, TrainingAddition.added_at > func.now() - window)
                .order_by(TrainingAddition.added_at)
            )
        ).all()
        used = sum(row[0] for row in recent)
        if used + chunks > rate:
            # The oldest records age out first: wait until enough of them have.
            freed, wait = 0, float(settings.training_window)
            for counted, ages_out in recent:
                freed += counted
                if used - freed + chunks <= rate:
                    wait = float(ages_out)
                    break
            raise ToolFailure(
                f"training limit reached: you added {used} chunks in the last {settings.training_window} s "
                f"and this text has {chunks} new; a user may add {rate} {per}. Try again in "
                f"{max(1, math.ceil(wait))} s. Nothing was changed."
            )
    cap = settings.training_max_stored_chunks
    if cap:
        mine = select(
            store.parent_value(TrainingAddition.parent_id), cast(TrainingAddition.item_id, String)
        ).where(TrainingAddition.user_id == user)
        stored = await store.count_items(conn, mine)
        if stored + chunks > cap:
            raise ToolFailure(
                f"storage limit reached: the content you added holds {stored} chunks and this text has "
                f"{chunks} new; a user may store {cap}. Remove items you no longer need "
                "(remove_training_content). Nothing was changed."
            )
    await _prune(conn, store, user, window)
    return (
        await conn.execute(
            insert(TrainingAddition)
            .values(user_id=user, parent_id=str(parent_id), item_id=item_id, chunks=chunks)
            .returning(TrainingAddition.id)
        )
    ).scalar_one()


async def settle(conn: AsyncConnection, record: uuid.UUID, added: int) -> None:
    """The add stored ``added`` chunks (fewer than reserved when a concurrent add of the same text
    stored some first): count those."""
    if added:
        await conn.execute(update(TrainingAddition).where(TrainingAddition.id == record).values(chunks=added))
    else:
        await release(conn, record)


async def release(conn: AsyncConnection, record: uuid.UUID) -> None:
    """The add failed and stored nothing: it counts against nothing."""
    await conn.execute(delete(TrainingAddition).where(TrainingAddition.id == record))


async def _prune(conn: AsyncConnection, store: KnowledgeStore, user: uuid.UUID, window: dt.timedelta) -> None:
    """Forget the user's records that count against nothing any more: out of the window, and with
    no chunk of their item left."""
    stale = (
        select(TrainingAddition.id)
        .where(
            TrainingAddition.user_id == user,
            TrainingAddition.added_at <= func.now() - window,
            ~exists(
                store.item_chunks(
                    store.parent_value(TrainingAddition.parent_id), cast(TrainingAddition.item_id, String)
                )
            ),
        )
        .limit(PRUNE_BATCH)
    )
    await conn.execute(delete(TrainingAddition).where(TrainingAddition.id.in_(stale.scalar_subquery())))


@asynccontextmanager
async def released_unless_done(database: Database, caller: Caller, record: uuid.UUID) -> AsyncIterator[None]:
    """Release the record when the block fails: the add stored nothing (the block ends with the
    transaction that stores the chunks and settles the record). Shielded, so that an add whose time
    ran out is released too; when the release itself fails, the record stays counted until it ages
    out of the window, and the block's own failure is what the caller sees."""
    try:
        yield
    except BaseException:
        with anyio.CancelScope(shield=True):
            try:
                async with database.user_transaction(caller) as conn:
                    await release(conn, record)
            except Exception:  # the database that failed the add may fail this too: log, re-raise the add's
                log.warning("could not release training record %s of a failed add", record, exc_info=True)
        raise
