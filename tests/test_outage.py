"""A database outage: a clear tool error, nothing leaked, and recovery without a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client

from rowscope.server import demo
from rowscope.server.app import build_mcp, build_runtime
from rowscope.server.settings import Settings
from tests.cluster import Cluster, demo_cluster
from tests.conftest import error_text, structured

pytestmark = pytest.mark.anyio


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with demo_cluster(tmp_path) as cluster:
        yield cluster


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
