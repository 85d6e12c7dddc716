"""Which database rowscope talks to: ``DATABASE_URL`` if set, else the embedded one (migrated on
start). A configured server is migrated only by ``rowscope migrate``; serving refuses to start on a
schema that is behind, rather than failing on the first tool call."""

from __future__ import annotations

import getpass
import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.exc import DBAPIError

from rowscope.db import migrate
from rowscope.db.engine import Database, DatabaseUrl
from rowscope.db.guard import (
    TOOL_ROLE,
    LockRefused,
    first_line,
    said_statement_mode,
    statement_mode_refused,
)
from rowscope.server.settings import Settings

if TYPE_CHECKING:
    from rowscope.db.rls import Compared

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
        with database_failures(url):
            migrate.upgrade(url)
    return ResolvedDatabase(url=url, embedded=embedded)


def require_current_schema(url: str) -> None:
    with database_failures(url):
        behind = migrate.pending(DatabaseUrl.parse(url).sqlalchemy)
    if behind:
        raise DatabaseSetupError("the database schema is not up to date: run `rowscope migrate` first")


def require_servable(settings: Settings, url: str) -> None:
    """Refuse to serve, in one line, where the policy does not match the database (a table or
    column it names is missing), row-level security could not hold (``db/guard.py``) or, unless
    ``settings.rls_check`` is off, lock 2 does not give the sampled users what the policy gives
    (``db/rls.py``). Run once before serving (by ``stdio``, and by ``serve`` or the parent of its
    workers), so a failure is the CLI's one line and not a traceback from inside a server's lifespan."""
    from rowscope.db.rls import RlsMismatch

    try:
        prove_servable(settings, url, rls=settings.rls_check)
    except RlsMismatch as exc:
        raise DatabaseSetupError(
            f"refusing to serve: {exc} (or start with --no-rls-check, ROWSCOPE_RLS_CHECK=off)"
        ) from None
    except LockRefused as exc:
        raise DatabaseSetupError(f"refusing to serve: {exc}") from None


def prove_servable(settings: Settings, url: str, *, rls: bool) -> Compared | None:
    """The checks of :func:`require_servable`, raising :class:`LockRefused` (``rls.RlsMismatch``
    for lock 2's row sets); what ``rowscope rls check`` compared, when ``rls``."""
    import anyio

    from rowscope.db import rls as rls_check
    from rowscope.db.knowledge import KnowledgeStore
    from rowscope.db.policy import PolicyError, load_policy, policy_origin
    from rowscope.server.app import tool_url
    from rowscope.server.runtime import compile_policy

    policy = load_policy(settings.policy)
    database = Database(DatabaseUrl.parse(url), tool_url=tool_url(settings), pool_size=1)

    async def check() -> Compared | None:
        try:
            with database_failures(database.url):
                try:
                    compiled = await compile_policy(database, policy)
                    if policy.knowledge is not None:
                        KnowledgeStore(compiled)  # its columns fit the policy (db/knowledge.py)
                        offline_fits(settings, policy.knowledge.dimensions)
                except PolicyError as exc:
                    raise PolicyError(
                        f"{policy_origin(settings.policy)} does not match the database: {exc}"
                    ) from None
            with database_failures(database.tool_url, tool=True):
                await database.verify(policy.table_names())
            if not rls:
                return None
            with database_failures(database.url):
                return await rls_check.check(database, compiled)
        finally:
            await database.dispose()

    return anyio.run(check)


def offline_fits(settings: Settings, dimensions: int) -> None:
    """Without an OpenAI key the offline model embeds: its vectors are padded to the policy's
    dimension, never cut (``embeddings/offline.py``), so a smaller dimension cannot be served."""
    from rowscope.db.policy import PolicyError
    from rowscope.embeddings.offline import MINILM_NATIVE_DIMENSIONS

    if not settings.openai_api_key and dimensions < MINILM_NATIVE_DIMENSIONS:
        raise PolicyError(
            f"knowledge.dimensions is {dimensions}, but without OPENAI_API_KEY the offline model embeds, "
            f"and its vectors have {MINILM_NATIVE_DIMENSIONS} values (padded to a larger dimension, never "
            "cut): set OPENAI_API_KEY (OpenAI's text-embedding-3 models take a dimensions parameter)"
        )


@contextmanager
def database_failures(url: str | DatabaseUrl, *, tool: bool = False) -> Iterator[None]:
    """Every start path's one translation of a database failure into one line
    (:class:`DatabaseSetupError`): where (server, database, role) and why in plain words. ``tool``:
    the role is the tool role that ``rowscope migrate`` creates, so say how it logs in."""
    try:
        yield
    except (DBAPIError, psycopg.Error) as exc:
        origin = _origin(exc)
        if said_statement_mode(origin):  # the first transaction a pooler in statement mode sees
            raise DatabaseSetupError(f"refusing to serve: {statement_mode_refused(origin)}") from None
        parsed = url if isinstance(url, DatabaseUrl) else DatabaseUrl.parse(url)
        message = describe_failure(parsed, origin)
        if tool and isinstance(origin, psycopg.OperationalError):
            message += (
                f" ({TOOL_ROLE} is the tool transactions' login: `rowscope migrate` creates it; where the "
                "server asks for a password, give it one in ROWSCOPE_TOOL_DATABASE_URL and run "
                "`rowscope migrate` once)"
            )
        raise DatabaseSetupError(message) from None


def describe_failure(url: DatabaseUrl, exc: BaseException) -> str:
    """``exc`` from reaching or using the database at ``url``, in one line. A connection failure is
    "cannot connect to database D on HOST:PORT as role R: why", the why in plain words where libpq's
    message is a known one (wrong password, refused, no such database or role, ...), else libpq's own
    words; any other error is the server's first line. Never a password: the URL's is not read, and
    neither libpq's nor the server's messages carry one."""
    where = _where(url)
    if not isinstance(exc, psycopg.OperationalError) or isinstance(exc, psycopg.errors.QueryCanceled):
        return f"{where}: {first_line(exc)}"
    return f"cannot connect to {where}: {_why(exc)}"


def _where(url: DatabaseUrl) -> str:
    params = {k: str(v) for k, v in conninfo_to_dict(url.libpq).items() if v is not None}
    user = params.get("user") or getpass.getuser()  # libpq's defaults
    host = params.get("host") or "localhost"
    server = f"the socket in {host}" if host.startswith("/") else f"{host}:{params.get('port') or 5432}"
    return f"database {params.get('dbname') or user!r} on {server} as role {user!r}"


_WHY = (
    (re.compile(r"password authentication failed"), "wrong password"),
    (re.compile(r"no password supplied"), "the server asks for a password and none was given"),
    (re.compile(r'database "([^"]*)" does not exist'), "there is no database {0!r} on that server"),
    (re.compile(r'role "([^"]*)" does not exist'), "there is no role {0!r} on that server"),
    (re.compile(r"Connection refused"), "connection refused: no PostgreSQL listens there"),
    (re.compile(r"socket .* failed: No such file or directory"), "no PostgreSQL socket there"),
    (
        re.compile(r"could not translate host name|failed to resolve host|Name or service not known"),
        "unknown host name",
    ),
    (re.compile(r"timeout expired|timed out"), "no answer (the connection timed out)"),
    (re.compile(r"no pg_hba\.conf entry"), "the server's pg_hba.conf admits no such connection"),
    (re.compile(r"too many clients|connection slots are reserved"), "the server has no connection left"),
)


def _why(exc: BaseException) -> str:
    text = str(exc)
    for pattern, why in _WHY:
        found = pattern.search(text)
        if found:
            return why.format(*found.groups())
    # libpq's own reason: what follows "... failed: " on the first line, without "FATAL:".
    line = first_line(exc)
    reason = line.rpartition("failed: ")[2] or line
    return re.sub(r"^(FATAL|ERROR):\s+", "", reason)


def _origin(exc: BaseException) -> BaseException:
    """The driver's own error under SQLAlchemy's wrapper (whose text adds the SQL and a link)."""
    orig = getattr(exc, "orig", None)
    return orig if isinstance(orig, BaseException) else exc
