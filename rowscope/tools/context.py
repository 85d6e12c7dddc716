"""Who is calling and with what: every tool starts here, and no tool runs without a user."""

from __future__ import annotations

import uuid
from typing import Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import Context

from rowscope.db.subjects import Caller, UnknownSubject
from rowscope.server.runtime import Runtime
from rowscope.tools.errors import ToolFailure


def runtime(ctx: Context[Any]) -> Runtime:
    state = ctx.request_context.lifespan_context
    assert isinstance(state, Runtime)
    return state


def current_account(ctx: Context[Any]) -> uuid.UUID:
    """The account this request runs as: the token's subject over HTTP, the configured user on stdio."""
    token = get_access_token()
    if token is not None and token.subject:
        return uuid.UUID(token.subject)
    stdio_user = runtime(ctx).stdio_user
    if stdio_user is not None and token is None:
        return stdio_user
    raise ToolFailure("this request carries no user; sign in again")


async def current_caller(ctx: Context[Any]) -> Caller:
    """The account and the application's subject for it (``db/subjects.py``)."""
    try:
        return await runtime(ctx).subjects.caller(current_account(ctx))
    except UnknownSubject as exc:  # never served as a stand-in id (fail closed)
        raise ToolFailure(
            f"{exc}; sign in again, or ask the operator to add you (`rowscope users add`)"
        ) from None
