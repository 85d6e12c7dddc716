"""A client rowscope does not control doing its own OAuth: the MCP Inspector CLI (npm, v2) against
``rowscope serve`` discovers the authorization server, registers itself, sends the user to the
authorization URL it prints, receives the code on its own loopback callback listener, and then
lists and calls the tools with the token it obtained, exactly as a developer would from a shell.

The user's part (sign-in and consent) is played by ``tests.oauth.Browser`` on the very URL the
Inspector prints; the redirect it ends in is delivered to the Inspector's listener over HTTP."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
import httpx2
import pytest
from anyio.abc import ByteReceiveStream

from tests.oauth import Browser, title
from tests.servers import free_port, serve
from tests.test_inspector import inspector

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

__all__ = ["inspector"]  # the session fixture installing the pinned Inspector into .cache/inspector

PROMPT = re.compile(rb"Please navigate to: (\S+)\r?\n")
TOOL_CALL = ["--tool-name", "query_records", "--tool-arg", "model=UserProfile"]
TOOLS = {
    "query_records",
    "count_records",
    "list_sparks",
    "search_knowledge",
    "add_training_content",
    "remove_training_content",
}


@pytest.fixture(scope="module")
def base_url(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(database_url, tmp_path_factory.mktemp("inspector-oauth")) as url:
        yield url


def inspector_env(home: Path) -> dict[str, str]:
    """The Inspector's environment: its own HOME (catalog, OAuth state and secrets file stay in the
    test's tmp dir), a file secret store (no OS keychain here, and the second run must find the
    tokens), and interactive OAuth without a TTY: ``MCP_AUTO_OPEN_ENABLED=true`` makes it print the
    authorization URL; ``BROWSER=true`` turns the browser it then tries to open into a no-op."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROWSCOPE_", "MCP_"))}
    return env | {
        "HOME": str(home),
        "MCP_CATALOG_PATH": str(home / "mcp.json"),
        "MCP_INSPECTOR_SECRET_STORE": "file",
        "MCP_AUTO_OPEN_ENABLED": "true",
        "BROWSER": "true",
        "NO_COLOR": "1",
    }


async def run_signing_in(
    command: list[str], env: dict[str, str], browser: Browser, callback_url: str
) -> tuple[int, str, str]:
    """Run the Inspector; when it prints the authorization URL, sign in and consent in ``browser``
    and deliver the resulting redirect to its callback listener. (exit code, stdout, stderr)."""
    out, err = bytearray(), bytearray()
    prompted: list[str] = []
    seen = anyio.Event()

    async def drain(stream: ByteReceiveStream | None, buffer: bytearray, watch: bool) -> None:
        assert stream is not None
        async for chunk in stream:
            buffer.extend(chunk)
            found = PROMPT.search(buffer) if watch and not prompted else None
            if found:
                prompted.append(found.group(1).decode())
                seen.set()
        if watch:
            seen.set()  # the Inspector closed stderr (exited) without asking for a sign-in

    process = await anyio.open_process(command, env=env, stdin=subprocess.DEVNULL)
    try:
        with anyio.fail_after(120):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(drain, process.stdout, out, False)
                tasks.start_soon(drain, process.stderr, err, True)
                with anyio.fail_after(60):
                    await seen.wait()
                assert prompted, f"the Inspector printed no authorization URL:\n{err.decode()}"
                query = await browser.authorize(prompted[0])
                async with httpx2.AsyncClient(timeout=15) as http:
                    delivered = await http.get(f"{callback_url}?{urlencode(query)}")
                assert delivered.status_code == 200, delivered.text
                code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.move_on_after(10, shield=True):
            await process.wait()
        await process.aclose()
    return code, out.decode(), err.decode()


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=90
    )


async def test_the_inspector_cli_signs_in_with_oauth_then_lists_and_calls_tools(
    inspector: Path, base_url: str, tmp_path: Path
) -> None:
    """Spec-required: MCP authorization 2025-11-25 end to end with an independent client (RFC 9728
    discovery, RFC 8414 metadata, RFC 7591 registration, PKCE S256, RFC 8252 loopback redirect);
    then a second, non-interactive run (``--stored-auth-only``) calls a tool with the stored token."""
    env = inspector_env(tmp_path / "home")
    callback_url = f"http://127.0.0.1:{free_port()}/oauth/callback"
    target = [str(inspector), "--cli", f"{base_url}/mcp", "--format", "json", "--callback-url", callback_url]
    browser = Browser(base_url, email="carol@example.com")
    try:
        code, stdout, stderr = await run_signing_in(
            [*target, "--method", "tools/list"], env, browser, callback_url
        )
    finally:
        await browser.aclose()
    assert code == 0, stderr
    listed: dict[str, Any] = json.loads(stdout)["result"]  # --format json: {"result": ...}
    assert {t["name"] for t in listed["tools"]} == TOOLS
    # The Inspector registered itself (RFC 7591) and the user saw and approved its consent page.
    assert [title(page) for page in browser.pages] == [
        "Sign in to rowscope",
        "Allow MCP Inspector to use your rowscope data?",
    ]

    # A second run never prompts: it uses the OAuth state the first one stored.
    called = await anyio.to_thread.run_sync(
        run,
        [*target, "--stored-auth-only", "--method", "tools/call", *TOOL_CALL],
        env,
    )
    assert called.returncode == 0, called.stderr
    result = json.loads(called.stdout)["result"]
    assert result["isError"] is False
    assert [row["email"] for row in result["structuredContent"]["rows"]] == ["carol@example.com"]
    assert "Please navigate to" not in called.stderr
