"""``rowscope stdio --user EMAIL`` as an MCP host launches it: a child process spoken to over
stdin/stdout by the SDK's stdio client, with only the environment the host passes explicitly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from rowscope.db.engine import DatabaseUrl
from rowscope.server import demo
from rowscope.tools import TOOLS
from tests.conftest import error_text, structured

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROWSCOPE = str(Path(sys.executable).with_name("rowscope"))
SPARKS = {s["name"]: s for s in demo.SPARKS}
ALICE_COACH = str(SPARKS["Alice's Writing Coach"]["id"])
STUDIO_VOICE = str(SPARKS["Studio Brand Voice"]["id"])
BOB_PRIVATE = str(SPARKS["Bob's Private Journal"]["id"])


@pytest.fixture
def server_log(tmp_path: Path) -> Iterator[IO[str]]:
    """The child's stderr, kept in a file so its logs neither mix into the test output nor block."""
    with (tmp_path / "stdio-stderr.log").open("w+") as log:
        yield log


@pytest.fixture
def stdio_as(database_url: str, server_log: IO[str]) -> Any:
    @asynccontextmanager
    async def connect(email: str) -> AsyncIterator[Client]:
        params = StdioServerParameters(
            command=ROWSCOPE,
            args=["stdio", "--user", email],
            env={"DATABASE_URL": database_url},
        )
        async with Client(stdio_client(params, errlog=server_log)) as client:
            yield client

    return connect


async def test_stdio_server_lists_the_six_tools_with_annotations_true_to_each_tool(stdio_as: Any) -> None:
    """Spec-required (MCP tools/list, ToolAnnotations); the hint values are our choice per tool."""
    async with stdio_as("alice@example.com") as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {spec.fn.__name__ for spec in TOOLS}
    assert len(tools) == 6
    for spec in TOOLS:
        hints = tools[spec.fn.__name__].annotations
        assert hints is not None
        assert (
            hints.read_only_hint,
            hints.destructive_hint,
            hints.idempotent_hint,
            hints.open_world_hint,
        ) == (
            spec.read_only,
            spec.destructive,
            spec.idempotent,
            False,
        ), spec.fn.__name__
    for spec in TOOLS:  # each tool's result model, declared as its output schema
        schema = tools[spec.fn.__name__].output_schema
        assert schema is not None and schema["type"] == "object", spec.fn.__name__
    assert set(tools["query_records"].output_schema["properties"]) == {"model", "rows", "next_cursor"}  # type: ignore[index]


async def test_a_result_s_text_block_is_its_structured_content_as_compact_json(stdio_as: Any) -> None:
    """Our choice (rowscope/tools/results.py): clients that give the model only the text block get
    the structured content without the SDK's pretty-printing whitespace, and nothing else."""
    async with stdio_as("alice@example.com") as client:
        for name, arguments in [
            ("query_records", {"model": "PortfolioItem"}),
            ("count_records", {"model": "ChatMessage"}),
            ("list_sparks", {}),
        ]:
            result = await client.call_tool(name, arguments)
            (block,) = result.content
            assert block.type == "text"
            assert json.loads(block.text) == structured(result)
            assert block.text == json.dumps(structured(result), separators=(",", ":"), ensure_ascii=False)


async def test_every_read_tool_answers_over_stdio_with_only_the_users_own_rows(stdio_as: Any) -> None:
    """Our choice: stdio runs every call as the one --user, exactly like the in-process server."""
    async with stdio_as("alice@example.com") as client:
        sparks = structured(await client.call_tool("list_sparks", {}))
        portfolio = structured(await client.call_tool("query_records", {"model": "PortfolioItem"}))
        me = structured(await client.call_tool("query_records", {"model": "UserProfile"}))
        messages = structured(await client.call_tool("count_records", {"model": "ChatMessage"}))
        hits = structured(
            await client.call_tool(
                "search_knowledge", {"query": "exclamation marks in client emails", "top_k": 1}
            )
        )
    assert {s["name"] for s in sparks["sparks"]} == {
        "Alice's Writing Coach",
        "Studio Brand Voice",
        "Bob's Research Assistant",
    }
    assert {r["title"] for r in portfolio["rows"]} == {"Brand book 2026", "Essay drafts"}
    assert portfolio["next_cursor"] is None
    assert [r["email"] for r in me["rows"]] == ["alice@example.com"]
    assert messages == {"model": "ChatMessage", "count": 2}
    assert [h["spark_id"] for h in hits["hits"]] == [STUDIO_VOICE]


async def test_training_content_added_over_stdio_is_searchable_and_removed_again(
    stdio_as: Any, database_url: str
) -> None:
    """Our choice: add/remove round-trip through a real child process; the demo data is restored."""
    text = f"Stdio round trip marker {uuid.uuid4()}: Alice drafts her essays on yellow paper."
    item_id: str | None = None
    try:
        async with stdio_as("alice@example.com") as client:
            added = structured(
                await client.call_tool(
                    "add_training_content", {"spark_id": ALICE_COACH, "content": text, "title": "stdio test"}
                )
            )
            item_id = added["item_id"]
            assert added["chunks_added"] == added["chunks_total"] == 1
            found = structured(
                await client.call_tool(
                    "search_knowledge", {"query": text, "spark_id": ALICE_COACH, "top_k": 1}
                )
            )
            assert found["hits"][0]["content"] == text
            removed = structured(
                await client.call_tool(
                    "remove_training_content", {"spark_id": ALICE_COACH, "item_id": item_id}
                )
            )
            assert removed["chunks_removed"] == 1
    finally:
        if item_id is not None:  # restore the shared demo data even when an assertion failed
            dsn = DatabaseUrl.parse(database_url).sqlalchemy.replace("postgresql+psycopg://", "postgresql://")
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(
                    "DELETE FROM spark_embeddings WHERE spark_id = %s AND source_id = %s",
                    (ALICE_COACH, item_id),
                )


async def test_a_failing_call_over_stdio_is_a_tool_error_and_the_session_goes_on(stdio_as: Any) -> None:
    """Spec-required (MCP tools/call: tool failures are results with isError, not protocol errors)."""
    async with stdio_as("alice@example.com") as client:
        unknown_model = await client.call_tool("query_records", {"model": "ApiKey"})
        strangers_spark = await client.call_tool(
            "search_knowledge", {"query": "trip", "spark_id": BOB_PRIVATE}
        )
        still_alive = structured(await client.call_tool("count_records", {"model": "PortfolioItem"}))
    assert "ApiKey" in error_text(unknown_model)
    assert BOB_PRIVATE in error_text(strangers_spark)
    assert still_alive["count"] == 2


def test_stdio_for_an_unknown_user_exits_non_zero_and_says_how_to_create_the_user(database_url: str) -> None:
    """Our choice: an MCP host shows the server's stderr, so the reason must be there, not a traceback."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", ""),
        "DATABASE_URL": database_url,
    }
    done = subprocess.run(
        [ROWSCOPE, "stdio", "--user", "nobody@example.com"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert done.stdout == ""  # nothing that an MCP client could mistake for a message
    assert "nobody@example.com" in done.stderr
    assert "rowscope users add" in done.stderr
    assert "Traceback" not in done.stderr
