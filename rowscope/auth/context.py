"""What the authorization server's endpoints share, built once by the app factory."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from rowscope.auth import store
from rowscope.auth.cimd import ClientDocumentFetcher
from rowscope.db.engine import Database
from rowscope.server.settings import Settings


@dataclass
class AuthContext:
    settings: Settings
    database: Database
    fetcher: ClientDocumentFetcher
    # When this process last deleted stale registered clients (time.monotonic()).
    last_prune: float = float("-inf")

    @property
    def issuer(self) -> str:
        """RFC 8414 §2: the issuer, byte-identical in metadata and in every ``iss`` parameter."""
        return self.settings.base_url

    @property
    def resource(self) -> str:
        return self.settings.resource_url

    @property
    def code_ttl(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.settings.code_ttl)

    @property
    def access_ttl(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.settings.access_token_ttl)

    @property
    def refresh_ttl(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.settings.refresh_token_ttl)

    async def prune_stale_clients(self, every: float = 3600.0) -> None:
        """Delete stale registered clients, at most once per ``every`` seconds per process (Claude
        registers a new client on every fresh connection, so they pile up)."""
        if time.monotonic() - self.last_prune < every:
            return
        self.last_prune = time.monotonic()
        async with self.database.service_transaction() as conn:
            await store.delete_stale_clients(conn, dt.timedelta(days=self.settings.stale_client_days))

    @property
    def session_ttl(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.settings.session_ttl)
