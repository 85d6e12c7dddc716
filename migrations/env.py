"""Alembic environment. rowscope runs it programmatically (``rowscope migrate``, and on start of the
embedded database); the URL arrives in ``config.attributes["url"]`` and never through the ini file,
whose ``%`` interpolation would mangle passwords."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from rowscope.db.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    url = config.attributes["url"]
    # Nothing prepared: the migration may run through a transaction pooler (db/guard.py, 3).
    engine = create_engine(url, poolclass=pool.NullPool, connect_args={"prepare_threshold": None})
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("rowscope migrations run online only: use `rowscope migrate`")
run_migrations_online()
