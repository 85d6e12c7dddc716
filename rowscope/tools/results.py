"""What a tool's result becomes on the wire: its structured content, and that as compact JSON text.

Every tool returns a pydantic model, which is also its declared output schema. Left to itself the
MCP SDK would write the model into the text block pretty-printed (two-space indent, a line per
value); clients that hand the model only the text block — most do — then pay for that whitespace
in tokens on every call: ~12% of a 20-row ``query_records`` answer. So the tools are registered
through :func:`compact`, which returns the SDK a finished :class:`CompactResult`: the model
serialized once, as compact JSON, which is the text block, and that JSON read back as the
structured content (plain JSON values, as the SDK's own conversion gives). The SDK still validates
the structured content against the tool's output schema, which it reads, as before, from the tool's
own return annotation (``functools.wraps`` keeps it).

The result keeps the JSON it was made from, so a transport that writes the response itself (the
direct path, ``server/direct.py``) puts those bytes in as the structured content instead of
serializing the same rows a second time. Serializing the model once and reading it back costs less
than dumping it to JSON values and writing those out (bench/inprocess.py).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec

import pydantic_core
from mcp_types import CallToolResult, TextContent
from pydantic import BaseModel, PrivateAttr

P = ParamSpec("P")


class CompactResult(CallToolResult):
    """A tool's result made by :func:`compact`: one text block, the structured content as compact
    JSON, and no other field. :attr:`serialized` is that JSON, and :attr:`text` the text block's text: the
    same JSON, decoded."""

    _json: bytes = PrivateAttr(default=b"")

    @property
    def serialized(self) -> bytes:
        return self._json

    @property
    def text(self) -> str:
        block = self.content[0]
        assert isinstance(block, TextContent)
        return block.text

    @classmethod
    def of(cls, model: BaseModel) -> CompactResult:
        text = model.model_dump_json(by_alias=True)
        data = text.encode()
        result = cls(
            content=[TextContent(type="text", text=text)], structured_content=pydantic_core.from_json(data)
        )
        result._json = data
        return result


def compact(fn: Callable[P, Awaitable[BaseModel]]) -> Callable[P, Awaitable[CallToolResult]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> CallToolResult:
        return CompactResult.of(await fn(*args, **kwargs))

    return wrapper
