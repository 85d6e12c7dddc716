"""``GET /`` on the HTTP server: a small page saying what this is and the URL to give an assistant,
instead of a 404 (issue 12)."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from tests.servers import serve

pytestmark = pytest.mark.slow


def test_the_root_page_says_what_this_is_and_gives_the_mcp_url(database_url: str, tmp_path: Path) -> None:
    """Our choice: a person who opens the server's address learns what to do with it; the page is
    rendered like rowscope's other pages (never framed)."""
    with serve(database_url, tmp_path) as url, httpx2.Client(timeout=10) as http:
        page = http.get(f"{url}/")
        head = http.head(f"{url}/")
    assert page.status_code == head.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["x-frame-options"] == "DENY"
    assert f"<code>{url}/mcp</code>" in page.text
    assert "href=/connections" in page.text
    assert "MCP server" in page.text
