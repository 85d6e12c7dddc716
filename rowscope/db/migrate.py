"""Running the Alembic migrations that ship with rowscope (``migrations/`` in a checkout, packaged
as ``rowscope/_migrations`` inside the wheel)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool


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
    engine = create_engine(sync_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    return current != head
