"""Which database rowscope talks to: ``DATABASE_URL`` if set, else the embedded one (migrated on
start). A configured server is migrated only by ``rowscope migrate``; serving refuses to start on a
schema that is behind, rather than failing on the first tool call."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import psycopg

from rowscope.db import migrate
from rowscope.db.engine import Database, DatabaseUrl
from rowscope.db.guard import TOOL_ROLE, LockRefused, said_statement_mode, statement_mode_refused
from rowscope.server.settings import Settings

log = logging.getLogger(__name__)


class DatabaseSetupError(RuntimeError):
    """The database cannot be used as configured; the message says what to do."""


@dataclass
class ResolvedDatabase:
    url: str
    embedded: object | None  # the EmbeddedPostgres handle that keeps the server up, if any


def resolve_database(settings: Settings, *, migrate_embedded: bool = True) -> ResolvedDatabase:
    if settings.tool_database_url is not None:
        try:
            DatabaseUrl.parse(settings.tool_database_url.get_secret_value())
        except ValueError as exc:
            raise DatabaseSetupError(f"ROWSCOPE_TOOL_DATABASE_URL: {exc}") from exc
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
        if said_statement_mode(exc):  # the schema check is the first transaction a pooler sees
            raise DatabaseSetupError(f"refusing to serve: {statement_mode_refused(_origin(exc))}") from None
        raise DatabaseSetupError(f"cannot reach the database: {_reason(_origin(exc))}") from None
    if behind:
        raise DatabaseSetupError("the database schema is not up to date: run `rowscope migrate` first")


def require_lock_two(settings: Settings, url: str) -> None:
    """Refuse to serve where row-level security could not hold (``db/guard.py``), in one line."""
    import anyio

    from rowscope.db.policy import load_policy
    from rowscope.server.app import tool_url

    async def check() -> None:
        database = Database(DatabaseUrl.parse(url), tool_url=tool_url(settings), pool_size=1)
        try:
            await database.verify(load_policy(settings.policy).table_names())
        finally:
            await database.dispose()

    try:
        anyio.run(check)
    except LockRefused as exc:
        raise DatabaseSetupError(f"refusing to serve: {exc}") from None
    except psycopg.OperationalError as exc:
        where = DatabaseUrl.parse(url).as_role(TOOL_ROLE) if settings.tool_database_url is None else None
        role = where.user if where is not None else "the ROWSCOPE_TOOL_DATABASE_URL role"
        raise DatabaseSetupError(
            f"cannot connect as the tool role ({role}): {_reason(exc)}. After `rowscope migrate` the "
            "role logs in; give it a password with ROWSCOPE_TOOL_DATABASE_URL (and `rowscope migrate`) "
            "where the server asks for one"
        ) from None


def _origin(exc: BaseException) -> BaseException:
    """The driver's own error under SQLAlchemy's wrapper (whose text adds the SQL and a link)."""
    orig = getattr(exc, "orig", None)
    return orig if isinstance(orig, BaseException) else exc


def _reason(exc: BaseException) -> str:
    """libpq's own first line (it names host and role; it never carries a password)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
