"""Deleting what the authorization server no longer needs, in short batches.

What goes, each kind by its own rule:

* authorization codes an hour after they expired (until then a late replay of a spent code is
  still recognised and revokes what it issued, RFC 6749 §4.1.2; after that it is only unknown);
* token rows whose access and refresh tokens have both expired (a rotated or revoked row is kept
  until then, so presenting its refresh token again is still seen as reuse, OAuth 2.1 §4.3.1);
* sign-in sessions past their expiry;
* throttle rows older than the longest window that counts them (``throttle.py`` prunes its own
  kind as it records; this catches kinds nobody recorded lately);
* registered clients that never got a token, ``unused_client_ttl`` after registration (with the
  codes and consents they hold, by the foreign keys' cascade), and stale clients: registered ones
  unused for ``stale_client_days`` and holding no live token (``store.stale_clients``).

Each batch is one transaction deleting at most ``batch`` rows, skipping rows another transaction
holds, so a purge never holds a table for long and several processes may purge at once. Every
``rowscope serve`` process purges on start and then every ``purge_interval`` seconds;
``rowscope purge`` does one purge by hand.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import anyio
import anyio.abc
from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.exc import SQLAlchemyError

from rowscope.auth import store
from rowscope.db.engine import Database
from rowscope.db.models import AuthSession, OAuthClient, OAuthCode, OAuthToken, SigninFailure
from rowscope.server.settings import Settings

log = logging.getLogger(__name__)

BATCH = 1000
# How long a spent or expired code is kept after its expiry, so a replay is still recognised.
CODE_GRACE = dt.timedelta(hours=1)


def _targets(settings: Settings) -> list[tuple[str, Any, ColumnElement[bool]]]:
    """(name, table, what is expired) for each kind of row a purge deletes."""
    now = func.now()
    throttle_window = dt.timedelta(seconds=max(settings.signin_failure_window, settings.register_window))
    return [
        ("codes", OAuthCode, OAuthCode.expires_at < now - CODE_GRACE),
        (
            "tokens",
            OAuthToken,
            func.greatest(OAuthToken.access_expires_at, OAuthToken.refresh_expires_at) < now,
        ),
        ("sessions", AuthSession, AuthSession.expires_at < now),
        ("throttle rows", SigninFailure, SigninFailure.failed_at < now - throttle_window),
        (
            "unused clients",
            OAuthClient,
            store.unused_clients()
            & (OAuthClient.created_at < now - dt.timedelta(seconds=settings.unused_client_ttl)),
        ),
        ("stale clients", OAuthClient, store.stale_clients(dt.timedelta(days=settings.stale_client_days))),
    ]


async def purge(database: Database, settings: Settings, batch: int = BATCH) -> dict[str, int]:
    """Delete every expired row (see the module docstring); the number deleted of each kind."""
    deleted: dict[str, int] = {}
    for name, table, expired in _targets(settings):
        deleted[name] = 0
        while True:
            chosen = select(table.id).where(expired).limit(batch).with_for_update(skip_locked=True)
            async with database.service_transaction() as conn:
                result = await conn.execute(
                    delete(table).where(table.id.in_(chosen.scalar_subquery())).returning(table.id)
                )
                count = len(result.all())
            deleted[name] += count
            if count < batch:
                break
    return deleted


class Purger:
    """The server's periodic purge: one when the server starts, then one every ``purge_interval``."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.settings = settings

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        # The first purge completes before the server answers, so no request sees a purge half done
        # from its start; it is short (batches of indexed deletes).
        await self._once()
        task_status.started()
        while True:
            await anyio.sleep(self.settings.purge_interval)
            await self._once()

    async def _once(self) -> None:
        try:
            deleted = await purge(self.database, self.settings)
        except (SQLAlchemyError, OSError) as exc:  # the database restarting: try again next time
            log.warning("purging expired OAuth rows failed: %s", type(exc).__name__)
            return
        if any(deleted.values()):
            log.info("purged %s", ", ".join(f"{n} {name}" for name, n in deleted.items() if n))
