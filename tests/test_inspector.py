"""A client rowscope does not control: the MCP Inspector's CLI (npm) launching ``rowscope stdio``,
listing the tools and calling one, exactly as a developer would from a shell."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ROWSCOPE = str(Path(sys.executable).with_name("rowscope"))
# Verified here on Node 20.20 (its package declares node >= 22.19, which npm only warns about).
INSPECTOR_VERSION = "2.12.0"
INSPECTOR_DIR = REPO / ".cache" / "inspector"
PACKAGE = "@modelcontextprotocol/inspector"


def _installed_version() -> str | None:
    manifest = INSPECTOR_DIR / "node_modules" / PACKAGE / "package.json"
    if not manifest.exists():
        return None
    return str(json.loads(manifest.read_text())["version"])


@pytest.fixture(scope="session")
def inspector() -> Path:
    """The pinned Inspector, installed once into .cache/inspector (reused by later sessions)."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must provide Node.js and npm for the MCP Inspector tests (.ci/run installs them)")
        pytest.skip("Node.js/npm are not installed; the MCP Inspector tests need them")
    if _installed_version() != INSPECTOR_VERSION:
        INSPECTOR_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "npm",
                "install",
                "--prefix",
                str(INSPECTOR_DIR),
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                f"{PACKAGE}@{INSPECTOR_VERSION}",
            ],
            check=True,
            stdin=subprocess.DEVNULL,
            timeout=300,
        )
    binary = INSPECTOR_DIR / "node_modules" / ".bin" / "mcp-inspector"
    assert binary.exists(), f"{PACKAGE}@{INSPECTOR_VERSION} installed no mcp-inspector binary"
    return binary


def run_inspector(inspector: Path, database_url: str, tmp_path: Path, *method: str) -> Any:
    """``mcp-inspector --cli rowscope stdio --user alice@example.com -e DATABASE_URL=... <method>``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROWSCOPE_") and k != "DATABASE_URL"}
    env["MCP_CATALOG_PATH"] = str(tmp_path / "mcp.json")  # never touch ~/.mcp-inspector
    done = subprocess.run(
        [
            str(inspector),
            "--cli",
            ROWSCOPE,
            "stdio",
            "--user",
            "alice@example.com",
            "-e",
            f"DATABASE_URL={database_url}",
            *method,
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_inspector_cli_lists_the_six_tools(inspector: Path, database_url: str, tmp_path: Path) -> None:
    """Spec-required (MCP tools/list), checked by an independent client implementation."""
    listed = run_inspector(inspector, database_url, tmp_path, "--method", "tools/list")
    tools = {t["name"]: t for t in listed["tools"]}
    assert set(tools) == {
        "query_records",
        "count_records",
        "list_sparks",
        "search_knowledge",
        "add_training_content",
        "remove_training_content",
    }
    assert tools["list_sparks"]["annotations"]["readOnlyHint"] is True
    assert tools["remove_training_content"]["annotations"]["destructiveHint"] is True
    assert tools["query_records"]["inputSchema"]["required"] == ["model"]


def test_the_inspector_cli_calls_a_tool_as_the_stdio_user(
    inspector: Path, database_url: str, tmp_path: Path
) -> None:
    """Spec-required (MCP tools/call: structuredContent plus a text rendering), via the Inspector."""
    called = run_inspector(
        inspector, database_url, tmp_path, "--method", "tools/call", "--tool-name", "list_sparks"
    )
    assert called["isError"] is False
    names = {s["name"] for s in called["structuredContent"]["sparks"]}
    assert names == {"Alice's Writing Coach", "Studio Brand Voice", "Bob's Research Assistant"}
    assert json.loads(called["content"][0]["text"]) == called["structuredContent"]


def test_the_inspector_cli_passes_tool_arguments(inspector: Path, database_url: str, tmp_path: Path) -> None:
    """Our choice: the Inspector's key=value arguments reach a typed tool (string → model name)."""
    counted = run_inspector(
        inspector,
        database_url,
        tmp_path,
        "--method",
        "tools/call",
        "--tool-name",
        "count_records",
        "--tool-arg",
        "model=PortfolioItem",
    )
    assert counted["structuredContent"] == {"model": "PortfolioItem", "count": 2}
