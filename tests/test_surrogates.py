"""Text that is not Unicode: a lone surrogate (``"\\ud800"`` in JSON) reaches the tools on the
2026-07-28 wire, whose JSON parser (Python's ``json``) accepts it, and PostgreSQL can take no such
text. Sent to a real ``rowscope serve`` as raw JSON, it must be a tool error that says what is wrong
and changes nothing, never an unexpected error with a traceback in the log (issue 12)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa

from rowscope.server import demo
from tests.servers import serve
from tests.test_direct import HEADERS, MODERN, modern

pytestmark = pytest.mark.slow

ALICE_COACH = str(demo._id("spark-alice-coach"))
LONE = "\\ud800"  # as it is written in the JSON text: a high surrogate with no low one after it


@pytest.fixture(scope="module", params=["direct", "sdk"])
def server(
    request: pytest.FixtureRequest, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """A real server, answering read tools on the direct path or through the SDK's transport."""
    log_dir = tmp_path_factory.mktemp(f"surrogates-{request.param}")
    env = {"ROWSCOPE_DIRECT_TOOL_CALLS": "false"} if request.param == "sdk" else {}
    with serve(database_url, log_dir, **env) as url:
        yield url, log_dir


@pytest.fixture(scope="module")
def key(make_api_key: Callable[..., str]) -> str:
    return make_api_key("alice@example.com", "test_surrogates alice")


def call_raw(url: str, key: str, tool: str, arguments_json: str) -> dict[str, Any]:
    """tools/call on the 2026-07-28 wire with ``arguments_json`` spliced into the body as written."""
    body = modern(tool, {"__args__": 0})
    text = httpx2.Response(200, json=body).text.replace('{"__args__":0}', arguments_json)
    headers = HEADERS | {"MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": tool}
    headers["Authorization"] = f"Bearer {key}"
    response = httpx2.post(f"{url}/mcp", content=text.encode(), headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert isinstance(result, dict)
    return result


def logs(log_dir: Path) -> str:
    return "".join(path.read_text() for path in log_dir.glob("serve-*.log"))


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(f'{{"title": "{LONE}"}}', id="equals"),
        pytest.param(f'{{"title": {{"contains": "a{LONE}b"}}}}', id="contains"),
        pytest.param(f'{{"title": {{"in": ["ok", "{LONE}"]}}}}', id="in list"),
        pytest.param(f'{{"OR": [{{"title": {{"not": "x{LONE}"}}}}]}}', id="nested not"),
    ],
)
def test_a_lone_surrogate_in_a_filter_value_is_a_tool_error_that_names_it(
    server: tuple[str, Path], key: str, where: str
) -> None:
    """Our choice: the filter names the field and says the text is not valid Unicode."""
    url, log_dir = server
    for tool in ("query_records", "count_records"):
        result = call_raw(url, key, tool, f'{{"model": "PortfolioItem", "where": {where}}}')
        assert result.get("isError") is True, result
        text = result["content"][0]["text"]
        assert "title" in text and "surrogate" in text, text
    assert "Traceback" not in logs(log_dir)
    assert "unexpected" not in logs(log_dir)


def test_a_lone_surrogate_in_training_content_is_a_tool_error_and_adds_nothing(
    server: tuple[str, Path], key: str, admin: sa.Engine
) -> None:
    """Our choice: a write with text that is not Unicode changes nothing and says why (the SDK's
    argument validation refuses such a string argument: pydantic's ``string_unicode``)."""
    url, log_dir = server

    def chunks() -> int:
        with admin.connect() as conn:
            count = conn.execute(
                sa.text("SELECT count(*) FROM spark_embeddings WHERE spark_id = :s"), {"s": ALICE_COACH}
            ).scalar_one()
            return int(count)

    before = chunks()
    for arguments in (
        f'{{"spark_id": "{ALICE_COACH}", "content": "Surrogate text {LONE} here."}}',
        f'{{"spark_id": "{ALICE_COACH}", "content": "Fine text.", "title": "t{LONE}"}}',
    ):
        result = call_raw(url, key, "add_training_content", arguments)
        assert result.get("isError") is True, result
        assert "unicode" in result["content"][0]["text"].lower()
    result = call_raw(url, key, "search_knowledge", f'{{"query": "q{LONE}"}}')
    assert result.get("isError") is True, result
    assert "unicode" in result["content"][0]["text"].lower()
    assert chunks() == before
    assert "Traceback" not in logs(log_dir)
