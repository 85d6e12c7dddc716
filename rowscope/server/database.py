"""Which database rowscope talks to: ``DATABASE_URL`` if set, else the embedded one (migrated on
start). A configured server is migrated only by ``rowscope migrate``; serving refuses to start on a
schema that is behind, rather than failing on the first tool call."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

from rowscope.db import migrate
from rowscope.db.engine import DatabaseUrl
from rowscope.server.settings import Settings

log = logging.getLogger(__name__)


class DatabaseSetupError(RuntimeError):
    """The database cannot be used as configured; the message says what to do."""


@dataclass
class ResolvedDatabase:
    url: str
    embedded: object | None  # the EmbeddedPostgres handle that keeps the server up, if any


def resolve_database(settings: Settings, *, migrate_embedded: bool = True) -> ResolvedDatabase:
    if settings.database_url is not None:
        raw = settings.database_url.get_secret_value()
        try:
            DatabaseUrl.parse(raw)
        except ValueError as exc:
            raise DatabaseSetupError(str(exc)) from exc
        return ResolvedDatabase(url=raw, embedded=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import
        from rowscope.db.embedded import EmbeddedPostgres

        embedded = EmbeddedPostgres(settings.data_dir)
    url = embedded.url()
    if migrate_embedded:
        migrate.upgrade(url)
    return ResolvedDatabase(url=url, embedded=embedded)


def require_current_schema(url: str) -> None:
    try:
        behind = migrate.pending(DatabaseUrl.parse(url).sqlalchemy)
    except Exception as exc:
        raise DatabaseSetupError(f"cannot reach the database: {type(exc).__name__}") from exc
    if behind:
        raise DatabaseSetupError("the database schema is not up to date: run `rowscope migrate` first")
