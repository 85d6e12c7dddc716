"""Throttling, counted in PostgreSQL: password sign-ins (without it anyone could try passwords against
an account as fast as the server verifies them) and dynamic client registrations per address.

A sign-in counts against two keys: its account (the SHA-256 of the lower-cased, stripped email, so
``signin_failures`` never holds an email) and its client address (``request.client.host``: the
peer's, or behind a proxy named in ``trusted_proxies`` the address its ``X-Forwarded-For`` gives;
an unnamed proxy makes every sign-in count against the proxy's own address). Each key
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

Registrations (``register.py``) count the same way under the kind ``register``, keyed by the
client address: :func:`record` with one :class:`Limit` (``register_max_per_address`` within
``register_window``); each accepted registration is one row.
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
REGISTER = "register"
# The first key of pg_advisory_xact_lock(int, int) for each kind, so keys of different kinds can
# never share a lock, and every attempt takes its account's lock before its address's (no deadlock).
LOCK_SPACES = {ACCOUNT: 0x5A0C_0001, ADDRESS: 0x5A0C_0002, REGISTER: 0x5A0C_0003}
# Expired rows deleted per recorded attempt: bounds the work of one sign-in.
PRUNE_BATCH = 1000


@dataclass(frozen=True)
class Limit:
    """At most ``allowed`` rows of ``kind`` under ``key`` within the last ``window``."""

    kind: str
    key: str
    allowed: int
    window: dt.timedelta


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


async def record(conn: AsyncConnection, limits: list[Limit]) -> dict[str, uuid.UUID] | Refused:
    """One row under each limit's key (their ids by kind), or a refusal recording nothing when any
    key is at its limit. Each key is locked while it is counted, so concurrent callers cannot all
    see the same count; the locks last until the transaction ends."""
    waits: list[float] = []
    for limit in limits:
        space = cast(LOCK_SPACES[limit.kind], Integer)
        await conn.execute(select(func.pg_advisory_xact_lock(space, func.hashtext(limit.key))))
        wait = await _wait(conn, limit.kind, limit.key, limit.allowed, limit.window)
        if wait is not None:
            waits.append(wait)
    if waits:
        return Refused(max(1, math.ceil(max(waits))))
    for limit in limits:
        expired = (
            select(SigninFailure.id)
            .where(SigninFailure.kind == limit.kind, SigninFailure.failed_at <= func.now() - limit.window)
            .limit(PRUNE_BATCH)
            .with_for_update(skip_locked=True)
        )
        await conn.execute(delete(SigninFailure).where(SigninFailure.id.in_(expired.scalar_subquery())))
    ids = (
        await conn.execute(
            insert(SigninFailure)
            .values([{"kind": limit.kind, "key": limit.key} for limit in limits])
            .returning(SigninFailure.id, SigninFailure.kind)
        )
    ).all()
    return {row.kind: row.id for row in ids}


async def attempt(conn: AsyncConnection, settings: Settings, email: str, address: str) -> Attempt | Refused:
    """Record a sign-in against its account and address, or refuse it (recording nothing) when
    either is over its limit. Commit before verifying the password, so other processes count it."""
    window = dt.timedelta(seconds=settings.signin_failure_window)
    account = account_key(email)
    recorded = await record(
        conn,
        [
            Limit(ACCOUNT, account, settings.signin_max_failures, window),
            Limit(ADDRESS, address, settings.signin_max_failures_per_address, window),
        ],
    )
    if isinstance(recorded, Refused):
        return recorded
    return Attempt(account, recorded[ADDRESS])


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
