"""Running the Alembic migrations that ship with rowscope (``migrations/`` in a checkout, packaged
as ``rowscope/_migrations`` inside the wheel)."""

from __future__ import annotations

from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy import create_engine, pool

from rowscope.db.guard import TOOL_ROLE


def migrations_dir() -> Path:
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("rowscope's migrations are missing from this installation")


def alembic_config(sync_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["url"] = sync_url
    return config


def upgrade(sync_url: str) -> None:
    """Bring the database at ``sync_url`` (a ``postgresql+psycopg://`` URL) to the newest revision."""
    command.upgrade(alembic_config(sync_url), "head")


def pending(sync_url: str) -> bool:
    """Whether the database is behind the newest revision this rowscope knows."""
    head = ScriptDirectory.from_config(alembic_config(sync_url)).get_current_head()
    # Nothing prepared: the migration may run through a transaction pooler (db/guard.py, 3).
    engine = create_engine(sync_url, poolclass=pool.NullPool, connect_args={"prepare_threshold": None})
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    return current != head


def set_tool_password(libpq_url: str, password: str) -> None:
    """Give the tool role ``password`` (``rowscope migrate`` with a ROWSCOPE_TOOL_DATABASE_URL that
    carries one). libpq turns it into the verifier the server's ``password_encryption`` asks for
    (SCRAM-SHA-256 by default) on this side, so the password itself never reaches the server, its
    logs or its statistics."""
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        verifier = conn.pgconn.encrypt_password(password.encode(), TOOL_ROLE.encode(), None)
        conn.execute(
            sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(
                sql.Identifier(TOOL_ROLE), sql.Literal(verifier.decode())
            )
        )
