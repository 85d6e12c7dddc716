"""Tool errors: the one place where failures become what the model reads.

A tool raises :class:`ToolFailure` (or a domain error such as ``FilterError``) with a message
written for the model. Database errors are never passed through as text: a lost connection
becomes "the database is unavailable", anything else a generic refusal, and the detail goes to
the server log only.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import psycopg
from mcp.server.mcpserver.exceptions import ToolError
from psycopg_pool import PoolTimeout
from sqlalchemy.exc import DBAPIError, OperationalError, TimeoutError

from rowscope.db.filters import NOT_UNICODE, FilterError
from rowscope.db.guard import LockRefused
from rowscope.embeddings import EmbeddingError

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class ToolFailure(Exception):
    """A failure whose message is safe and useful to show to the model."""


UNAVAILABLE = "The database is unavailable right now; nothing was changed. Try again shortly."
REFUSED = "The database refused this request; nothing was changed."
MISCONFIGURED = (
    "rowscope is misconfigured so that row-level security could not hold; nothing was read or "
    "changed. The server's administrator has the details in its log."
)


def translated(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except (ToolFailure, FilterError, EmbeddingError) as exc:
            raise ToolError(str(exc)) from None
        except UnicodeEncodeError:  # text no database can store (a lone surrogate) that no check caught
            raise ToolError(f"{NOT_UNICODE}; nothing was changed") from None
        except LockRefused as exc:  # fail closed (db/guard.py): the reason is for the operator
            log.error("refused in %s: %s", fn.__name__, exc)
            raise ToolError(MISCONFIGURED) from None
        except (OperationalError, TimeoutError, OSError, psycopg.OperationalError, PoolTimeout) as exc:
            log.warning("database unavailable in %s: %s", fn.__name__, exc)
            raise ToolError(UNAVAILABLE) from None
        except (DBAPIError, psycopg.Error) as exc:  # psycopg's own: Database.read_as
            if isinstance(exc, DBAPIError) and exc.connection_invalidated:
                log.warning("database connection lost in %s: %s", fn.__name__, exc)
                raise ToolError(UNAVAILABLE) from None
            log.exception("database error in %s", fn.__name__)
            raise ToolError(REFUSED) from None

    return wrapper
