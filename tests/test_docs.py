"""Docs that cannot drift: every setting, tool and command is in the README, and CI runs the
README's test command."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from rowscope.server.cli import COMMANDS, _parser
from rowscope.server.settings import Settings
from rowscope.tools import TOOLS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def env_names(field: str) -> set[str]:
    alias = Settings.model_fields[field].validation_alias
    names = {f"ROWSCOPE_{field.upper()}"}
    if alias is not None:
        names |= {str(choice) for choice in getattr(alias, "choices", [alias])}
    return names


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_documented_in_the_readme(field: str) -> None:
    """Our choice (STYLE: docs that cannot drift): a setting missing from the README fails."""
    assert env_names(field) & set(re.findall(r"`([A-Z_]+)`", README)), field


@pytest.mark.parametrize("tool", [t.fn.__name__ for t in TOOLS])
def test_every_tool_is_documented_in_the_readme(tool: str) -> None:
    """Our choice: the README's tool table lists every registered tool."""
    assert f"| `{tool}` |" in README


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_is_documented_in_the_readme(command: str) -> None:
    """Our choice: the README's command table lists every CLI command."""
    assert f"`rowscope {command}" in README


def test_ci_runs_exactly_the_readme_test_command() -> None:
    """Issue 2: .ci/run runs the README's test command from a clean clone."""
    quickstart = README.split("## Quickstart", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in quickstart.strip().splitlines()]
    assert commands == ["scripts/serve", "scripts/check"]
    ci = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert ci[-1] == "scripts/check"


def _parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """Every (sub)command's parser of the real CLI, with its command line: ``rowscope users add``."""
    found: list[tuple[str, argparse.ArgumentParser]] = []
    pending = [("rowscope", _parser())]
    while pending:
        name, parser = pending.pop()
        found.append((name, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending += [(f"{name} {sub}", p) for sub, p in action.choices.items()]
    return found


@pytest.mark.parametrize(("name", "parser"), _parsers(), ids=[n for n, _ in _parsers()])
def test_every_help_text_is_plain_text(name: str, parser: argparse.ArgumentParser) -> None:
    """Issue 12: --help is read in a terminal, where reStructuredText's backticks are noise."""
    assert "`" not in parser.format_help(), name


@pytest.mark.parametrize("name", [n for n, p in _parsers() if not p._subparsers and n != "rowscope"])
def test_every_command_line_is_in_the_readme_s_command_table(name: str) -> None:
    """Our choice: the README's command table lists every command and sub-command (users add,
    keys revoke, ...), not only the top-level ones."""
    table = README.split("## Commands", 1)[1].split("\n## ", 1)[0]
    assert f"| `{name}" in table, name


def test_the_readme_s_desktop_assistant_config_runs_stdio_by_absolute_path_with_a_data_dir() -> None:
    """Issue 12: Claude Desktop's claude_desktop_config.json, as the README gives it, starts a
    command this CLI accepts, by an absolute path (no shell, no PATH), with ROWSCOPE_DATA_DIR."""
    block = README.split("claude_desktop_config.json", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    (server,) = json.loads(block)["mcpServers"].values()
    assert Path(server["command"]).is_absolute() and server["command"].endswith("/.venv/bin/rowscope")
    args = _parser().parse_args(server["args"])
    assert (args.command, args.user) == ("stdio", "alice@example.com")
    assert Path(server["env"]["ROWSCOPE_DATA_DIR"]).is_absolute()
    assert set(server["env"]) <= {"ROWSCOPE_DATA_DIR", "DATABASE_URL"}


def test_the_readme_names_the_node_version_the_inspector_needs() -> None:
    """Issue 12: the Inspector's package declares node >= 22.19."""
    assert "Node.js 22.19 or newer" in README
