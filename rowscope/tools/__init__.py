"""Every tool rowscope serves, registered from the one list below (:func:`tools_for`): the query
tools, and the knowledge tools named after the policy's ``[knowledge]`` nouns (tools/collections.py;
none without a knowledge store)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

from rowscope.db.policy import PolicyFile
from rowscope.tools.collections import SPARK, Nouns, list_tool
from rowscope.tools.query import count_records, query_records
from rowscope.tools.results import compact
from rowscope.tools.retrieve import search_tool
from rowscope.tools.train import add_tool, remove_tool


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


def tools_for(nouns: Nouns | None) -> tuple[ToolSpec, ...]:
    """The tools, the knowledge tools named by ``nouns`` (None: the policy has no knowledge store)."""
    tools = [
        ToolSpec(query_records, "Query your records", **READ),
        ToolSpec(count_records, "Count your records", **READ),
    ]
    if nouns is not None:
        tools += [
            ToolSpec(list_tool(nouns), f"List your {nouns.collections}", **READ),
            ToolSpec(search_tool(nouns), f"Search {nouns.collection} knowledge", **READ),
            # Adding the same text twice adds nothing the second time: idempotent, and never destructive.
            ToolSpec(add_tool(nouns), "Add training content", False, False, True, writes=True),
            # Removing deletes chunks (destructive); removing again changes nothing more (idempotent).
            ToolSpec(remove_tool(nouns), "Remove training content", False, True, True, writes=True),
        ]
    return tuple(tools)


# The tools as Spark's policy (the default) names them: the names used where no policy is at hand.
TOOLS: tuple[ToolSpec, ...] = tools_for(SPARK)


def register_tools(server: MCPServer[Any], policy: PolicyFile) -> None:
    models = "\n".join(
        f"- {name}: {spec.description} Fields: {', '.join(spec.columns)}."
        for name, spec in policy.models.items()
    )
    nouns = Nouns.of(policy.knowledge) if policy.knowledge is not None else None
    for spec in tools_for(nouns):
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
