"""Who is calling and with what: every tool starts here, and no tool runs without a user."""

from __future__ import annotations

import uuid
from typing import Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import Context

from rowscope.server.runtime import Runtime
from rowscope.tools.errors import ToolFailure


def runtime(ctx: Context[Any]) -> Runtime:
    state = ctx.request_context.lifespan_context
    assert isinstance(state, Runtime)
    return state


def current_user(ctx: Context[Any]) -> uuid.UUID:
    """The user this request runs as: the token's subject over HTTP, the configured user on stdio."""
    token = get_access_token()
    if token is not None and token.subject:
        return uuid.UUID(token.subject)
    stdio_user = runtime(ctx).stdio_user
    if stdio_user is not None and token is None:
        return stdio_user
    raise ToolFailure("this request carries no user; sign in again")
