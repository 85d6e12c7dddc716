"""What the authorization server's endpoints share, built once by the app factory."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from rowscope.auth.cimd import ClientDocumentFetcher
from rowscope.db.engine import Database
from rowscope.server.settings import Settings


@dataclass
class AuthContext:
    settings: Settings
    database: Database
    fetcher: ClientDocumentFetcher

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

    @property
    def session_ttl(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.settings.session_ttl)
