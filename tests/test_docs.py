"""Docs that cannot drift: every setting, tool and command is in the README, and CI runs the
README's test command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rowscope.server.cli import COMMANDS
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
