"""Building rowscope from its settings: the runtime, the MCP server, and the HTTP app.

``build_runtime`` wires the long-lived parts; ``build_mcp`` registers the tools on an MCP server
whose lifespan starts and closes the runtime; ``build_http_app`` serves that server as Streamable
HTTP at ``/mcp`` behind the bearer-token verifier. Nothing is created at import time.
"""

from __future__ import annotations

import contextlib
import gc
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from rowscope import __version__
from rowscope.auth import authorize, metadata, oidc, register, revoke, token
from rowscope.auth.cimd import ClientDocumentFetcher
from rowscope.auth.context import AuthContext
from rowscope.auth.purge import Purger
from rowscope.auth.resource import BearerGuard
from rowscope.auth.token_cache import TokenCache
from rowscope.auth.verifier import RowscopeVerifier
from rowscope.db.engine import Database, DatabaseUrl
from rowscope.db.policy import PolicyFile, load_policy
from rowscope.embeddings import build_embedder
from rowscope.embeddings.base import DEFAULT_DIMENSIONS
from rowscope.server import home
from rowscope.server.direct import DirectToolCalls
from rowscope.server.runtime import Runtime
from rowscope.server.settings import Settings
from rowscope.tools import register_tools, tools_for
from rowscope.tools.collections import Nouns


def instructions(policy: PolicyFile) -> str:
    """What the server tells the assistant, in the policy's nouns (Spark: sparks)."""
    k = policy.knowledge
    knowledge = (
        f"{'list_' + k.collections} and search_knowledge read the knowledge of the {k.collections} they may "
        f"use, add_training_content / remove_training_content change a {k.collection}'s knowledge"
        if k is not None
        else ""
    )
    return (
        "rowscope gives you the signed-in user's own data: query_records / count_records read their "
        f"records{', ' + knowledge if knowledge else ''}. Every call is "
        "limited to this one user; there is no way to reach anyone else's rows."
    )


def tool_url(settings: Settings) -> DatabaseUrl | None:
    """ROWSCOPE_TOOL_DATABASE_URL, parsed; None: derived from the database's URL (Database)."""
    if settings.tool_database_url is None:
        return None
    return DatabaseUrl.parse(settings.tool_database_url.get_secret_value())


def build_runtime(settings: Settings, database_url: str, *, stdio_user: uuid.UUID | None = None) -> Runtime:
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    policy_file = load_policy(settings.policy)
    return Runtime(
        settings=settings,
        database=Database(
            DatabaseUrl.parse(database_url),
            tool_url=tool_url(settings),
            pool_size=settings.pool_size,
        ),
        policy_file=policy_file,
        embedder=build_embedder(
            openai_api_key=key,
            openai_base_url=settings.openai_base_url,
            openai_model=settings.embedding_model,
            # The knowledge store's vector length; without one, 1536 (seed 000's).
            dimensions=policy_file.knowledge.dimensions if policy_file.knowledge else DEFAULT_DIMENSIONS,
            batch_size=settings.embedding_batch_size,
            timeout=settings.embedding_timeout,
        ),
        stdio_user=stdio_user,
    )


def build_mcp(runtime: Runtime) -> MCPServer[Runtime]:
    @contextlib.asynccontextmanager
    async def lifespan(_: MCPServer[Runtime]) -> AsyncIterator[Runtime]:
        # Entered once per process on every transport (HTTP, stdio, in-process clients), so the
        # background indexer lives as long as the server does.
        await runtime.start()
        try:
            async with anyio.create_task_group() as tasks:
                if runtime.indexer is not None:
                    await tasks.start(runtime.indexer.run)
                try:
                    yield runtime
                finally:
                    tasks.cancel_scope.cancel()
        finally:
            # Also when the server was cancelled (stdio's stop on a signal): close the pools anyway.
            with anyio.move_on_after(10, shield=True):
                await runtime.close()

    server: MCPServer[Runtime] = MCPServer(
        "rowscope",
        title="rowscope",
        version=__version__,
        instructions=instructions(runtime.policy_file),
        lifespan=lifespan,
    )
    register_tools(server, runtime.policy_file)
    return server


def build_http_app(runtime: Runtime) -> McpFirst:
    """rowscope over HTTP: its OAuth 2.1 authorization server and, behind the bearer guard, MCP."""
    settings = runtime.settings
    server = build_mcp(runtime)
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=sorted(settings.host_resources),  # each with its resource identifier
        allowed_origins=sorted({settings.base_url, *(f"https://{h}" for h in settings.allowed_hosts)}),
    )
    mcp_app: ASGIApp = server.streamable_http_app(
        streamable_http_path="/mcp",
        stateless_http=True,  # every piece of state is in PostgreSQL: any worker can answer any call
        json_response=True,
        transport_security=security,
        host=settings.host,
    )
    fetcher = ClientDocumentFetcher(
        allow_private_addresses=settings.allow_private_client_documents,
        max_concurrent=settings.client_document_max_fetches,
        per_minute=settings.client_document_fetches_per_minute,
    )
    auth = AuthContext(
        settings=settings,
        database=runtime.database,
        fetcher=fetcher,
        hashing=runtime.hashing,
        subjects=runtime.subjects,
    )
    # LISTEN cannot work through pgbouncer in transaction mode: there, every request is verified.
    cache = None if runtime.database.url.pgbouncer else TokenCache(runtime.database.url.libpq)
    knowledge = runtime.policy_file.knowledge
    tools = tools_for(None if knowledge is None else Nouns.of(knowledge))
    if settings.direct_tool_calls:
        mcp_app = DirectToolCalls(
            mcp_app,
            server,
            runtime,
            security=security,
            tools=frozenset(spec.fn.__name__ for spec in tools if spec.read_only),
        )
    guarded = BearerGuard(
        mcp_app,
        RowscopeVerifier(runtime.database, settings.resource_url, cache),
        resource_url=settings.resource_url,
        host_resources=settings.host_resources,
        write_tools=frozenset(spec.fn.__name__ for spec in tools if spec.writes),
    )

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "version": __version__})

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with server.session_manager.run(), anyio.create_task_group() as tasks:
            if cache is not None:
                await tasks.start(cache.listen)
            await tasks.start(Purger(runtime.database, settings).run)
            # Everything built so far (modules, SQLAlchemy's and pydantic's schemas, the policy, the
            # pools) lives as long as the process: out of the collector's reach, so a full
            # collection no longer walks ~155,000 objects, ~80 ms with every request waiting (the
            # p99 of a loaded worker, bench/README.md), but only what came after.
            gc.freeze()
            try:
                yield {}
            finally:
                tasks.cancel_scope.cancel()
                await fetcher.aclose()

    routes = [
        *home.routes(settings),
        Route("/health", health),
        *metadata.routes(auth),
        *register.routes(auth),
        *authorize.routes(auth),
        *(oidc.routes(auth) if settings.oidc_issuer else []),
        *token.routes(auth),
        *revoke.routes(auth),
        Mount("/", app=guarded),
    ]
    return McpFirst(Starlette(routes=routes, lifespan=lifespan), guarded)


class McpFirst:
    """The HTTP app, with requests for ``/mcp`` itself handed straight to the bearer guard.

    They are nearly every request a deployment serves, and the Starlette app would send them
    there anyway (no other route matches ``/mcp``; the catch-all Mount gives them to the guard,
    unchanged) — after its error and exception middleware and a regular-expression match against
    each of the OAuth routes, ~13 µs of a tool call's CPU (measured side by side in process). Nothing
    else differs: an unexpected exception still ends as a 500 (uvicorn's instead of Starlette's,
    both logged), and every other path, the lifespan included, is the Starlette app's."""

    def __init__(self, app: Starlette, mcp: ASGIApp) -> None:
        self.app = app
        self.mcp = mcp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/mcp":
            await self.mcp(scope, receive, send)
        else:
            await self.app(scope, receive, send)
