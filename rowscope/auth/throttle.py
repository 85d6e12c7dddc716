"""Throttling of password sign-ins: without it anyone could try passwords against an account as fast
as the server verifies them.

A sign-in counts against two keys: its account (the SHA-256 of the lower-cased, stripped email, so
``signin_failures`` never holds an email) and its client address (``request.client.host``: behind
a proxy on another host, uvicorn's ``FORWARDED_ALLOW_IPS`` must name the proxy so that its
``X-Forwarded-For`` is used, or every sign-in counts against the proxy's address). Each key
allows ``signin_max_failures`` (account) or ``signin_max_failures_per_address`` failures within
the last ``signin_failure_window`` seconds, a sliding window. Over either limit, the sign-in is
refused before its password is verified, so the limit also bounds the hashing, and whether the
account exists makes no difference.

The counts are rows in PostgreSQL, so every worker process sees them. An attempt is recorded as a
failure *before* its password is verified, in a transaction that holds a per-key advisory lock
while it counts and inserts: concurrent attempts cannot all see the same count and overshoot the
limit. A success deletes the account's failures and its own address row. Refused attempts write
nothing (hammering a locked account does not extend the lock); expired rows are deleted whenever
an attempt is recorded, so the table holds at most the failures of one window.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import uuid
from dataclasses import dataclass

from sqlalchemy import Integer, cast, delete, func, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from rowscope.db.models import SigninFailure
from rowscope.server.settings import Settings

ACCOUNT = "account"
ADDRESS = "address"
# The first key of pg_advisory_xact_lock(int, int) for each kind, so an account and an address can
# never share a lock, and every attempt takes its account's lock before its address's (no deadlock).
LOCK_SPACES = {ACCOUNT: 0x5A0C_0001, ADDRESS: 0x5A0C_0002}
# Expired rows deleted per recorded attempt: bounds the work of one sign-in.
PRUNE_BATCH = 1000


@dataclass(frozen=True)
class Attempt:
    """A sign-in recorded as a failure under both keys until its password proves right."""

    account: str
    address_row: uuid.UUID


@dataclass(frozen=True)
class Refused:
    """A sign-in over a limit, and the seconds until it would be allowed again."""

    retry_after: int

    @property
    def message(self) -> str:
        minutes = max(1, math.ceil(self.retry_after / 60))
        return f"Too many failed sign-ins; try again in {minutes} minute{'' if minutes == 1 else 's'}."


def account_key(email: str) -> str:
    return hashlib.sha256(email.strip().lower().encode("utf-8")).hexdigest()


async def _wait(conn: AsyncConnection, kind: str, key: str, limit: int, window: dt.timedelta) -> float | None:
    """Seconds until the key is under its limit again, or None when it is under it now: the
    limit-th newest failure in the window is the one that has to age out."""
    found = (
        await conn.execute(
            select(func.extract("epoch", SigninFailure.failed_at + window - func.now()))
            .where(SigninFailure.kind == kind, SigninFailure.key == key)
            .where(SigninFailure.failed_at > func.now() - window)
            .order_by(SigninFailure.failed_at.desc())
            .offset(limit - 1)
            .limit(1)
        )
    ).scalar_one_or_none()
    return None if found is None else float(found)


async def attempt(conn: AsyncConnection, settings: Settings, email: str, address: str) -> Attempt | Refused:
    """Record a sign-in against its account and address, or refuse it (recording nothing) when
    either is over its limit. Commit before verifying the password, so other processes count it."""
    window = dt.timedelta(seconds=settings.signin_failure_window)
    keys = (
        (ACCOUNT, account_key(email), settings.signin_max_failures),
        (ADDRESS, address, settings.signin_max_failures_per_address),
    )
    waits: list[float] = []
    for kind, key, limit in keys:
        await conn.execute(
            select(func.pg_advisory_xact_lock(cast(LOCK_SPACES[kind], Integer), func.hashtext(key)))
        )
        wait = await _wait(conn, kind, key, limit, window)
        if wait is not None:
            waits.append(wait)
    if waits:
        return Refused(max(1, math.ceil(max(waits))))
    expired = (
        select(SigninFailure.id)
        .where(SigninFailure.failed_at <= func.now() - window)
        .limit(PRUNE_BATCH)
        .with_for_update(skip_locked=True)
    )
    await conn.execute(delete(SigninFailure).where(SigninFailure.id.in_(expired.scalar_subquery())))
    ids = (
        await conn.execute(
            insert(SigninFailure)
            .values([{"kind": kind, "key": key} for kind, key, _ in keys])
            .returning(SigninFailure.id, SigninFailure.kind)
        )
    ).all()
    return Attempt(keys[0][1], next(row.id for row in ids if row.kind == ADDRESS))


async def succeeded(conn: AsyncConnection, recorded: Attempt) -> None:
    """The password was right: the account's failures no longer count, nor does this attempt
    against its address (the address's other failures still do)."""
    await conn.execute(
        delete(SigninFailure).where(
            or_(
                (SigninFailure.kind == ACCOUNT) & (SigninFailure.key == recorded.account),
                SigninFailure.id == recorded.address_row,
            )
        )
    )
