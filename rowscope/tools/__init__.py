"""Every tool rowscope serves, registered from the one list below."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

from rowscope.db.policy import PolicyFile
from rowscope.tools.query import count_records, query_records
from rowscope.tools.results import compact
from rowscope.tools.retrieve import search_knowledge
from rowscope.tools.sparks import list_sparks
from rowscope.tools.train import add_training_content, remove_training_content


@dataclass(frozen=True)
class ToolSpec:
    fn: Callable[..., Any]
    title: str
    read_only: bool
    destructive: bool
    idempotent: bool
    # Whether the tool needs the write scope (enforced by the OAuth issue's scope check).
    writes: bool = False


READ = {"read_only": True, "destructive": False, "idempotent": True}

TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(query_records, "Query your records", **READ),
    ToolSpec(count_records, "Count your records", **READ),
    ToolSpec(list_sparks, "List your sparks", **READ),
    ToolSpec(search_knowledge, "Search spark knowledge", **READ),
    # Adding the same text twice adds nothing the second time: idempotent, and never destructive.
    ToolSpec(add_training_content, "Add training content", False, False, True, writes=True),
    # Removing deletes chunks (destructive); removing again changes nothing more (idempotent).
    ToolSpec(remove_training_content, "Remove training content", False, True, True, writes=True),
)


def register_tools(server: MCPServer[Any], policy: PolicyFile) -> None:
    models = "\n".join(
        f"- {name}: {spec.description} Fields: {', '.join(spec.columns)}."
        for name, spec in policy.models.items()
    )
    for spec in TOOLS:
        description = (spec.fn.__doc__ or "").strip()
        if spec.fn in (query_records, count_records):
            description += f"\nModels:\n{models}"
        server.add_tool(
            compact(spec.fn),
            title=spec.title,
            description=description,
            annotations=ToolAnnotations(
                title=spec.title,
                read_only_hint=spec.read_only,
                destructive_hint=spec.destructive,
                idempotent_hint=spec.idempotent,
                open_world_hint=False,
            ),
        )
