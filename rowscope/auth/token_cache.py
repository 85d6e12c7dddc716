"""A per-process cache of verified bearer tokens that revocations empty at once.

Verifying a token is a database look-up; caching the answer would let a revoked token through
until the entry expires, unless every process hears about revocations. Migrations 0004 and 0010
make PostgreSQL ``NOTIFY rowscope_revocations`` whenever a token, client or API key changes in a
column a verification reads (not for bookkeeping such as a refresh rotation's ``rotated_at``);
this cache keeps one ``LISTEN`` connection and clears itself on every notification. Entries are kept
for ``ttl`` seconds at most, and never past the token's own expiry.

The cache serves only while its listener is connected: if the connection drops, the cache is
emptied and bypassed until it is back. Behind a connection pooler ``LISTEN`` cannot be relied on,
so the cache is not used there at all: not where the URL says ``?pgbouncer=true``, and not where
the listener's connection turns out to be answered by a pooler (``db/guard.py``), whatever the
URL says.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

import anyio
import psycopg
from mcp.server.auth.provider import AccessToken

from rowscope.db.guard import inspect

log = logging.getLogger(__name__)

CHANNEL = "rowscope_revocations"


class TokenCache:
    def __init__(self, conninfo: str, *, ttl: float = 60.0, max_entries: int = 10_000) -> None:
        self.conninfo = conninfo
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, AccessToken]] = OrderedDict()
        self.listening = False
        # Bumped by every clear: a verification that started before a revocation must not cache
        # the answer it read before the revocation committed.
        self.generation = 0

    def get(self, digest: str) -> AccessToken | None:
        if not self.listening:
            return None
        entry = self._entries.get(digest)
        if entry is None:
            return None
        deadline, token = entry
        if deadline < time.monotonic() or (token.expires_at is not None and token.expires_at <= time.time()):
            self._entries.pop(digest, None)
            return None
        return token

    def put(self, digest: str, token: AccessToken, generation: int) -> None:
        """Cache ``token``, read from the database while ``generation`` was current."""
        if not self.listening or generation != self.generation:
            return
        self._entries[digest] = (time.monotonic() + self.ttl, token)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()

    async def listen(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled: hold the LISTEN connection, reconnecting with backoff."""
        started = False
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
                    if (await inspect(conn)).pooled:
                        # A pooler hands this connection's server to others between statements: a
                        # notification could go to whoever holds it then, so none may be relied on.
                        log.info(
                            "token cache: the database is behind a connection pooler; verifying every request"
                        )
                        if not started:
                            task_status.started()
                        return
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.clear()
                    self.listening = True
                    delay = 0.5
                    if not started:
                        started = True
                        task_status.started()
                    async for _ in conn.notifies():
                        self.clear()
            except (psycopg.Error, OSError) as exc:
                log.warning("token cache: listener lost (%s); verifying every request", type(exc).__name__)
            finally:
                self.listening = False
                self.clear()
            if not started:
                started = True
                task_status.started()
            await anyio.sleep(delay)
            delay = min(delay * 2, 30.0)
