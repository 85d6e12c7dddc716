"""Building rowscope from its settings: the runtime, the MCP server, and the HTTP app.

``build_runtime`` wires the long-lived parts; ``build_mcp`` registers the tools on an MCP server
whose lifespan starts and closes the runtime; ``build_http_app`` serves that server as Streamable
HTTP at ``/mcp`` behind the bearer-token verifier. Nothing is created at import time.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from rowscope import __version__
from rowscope.auth.verifier import READ_SCOPE, RowscopeVerifier
from rowscope.db.engine import Database, DatabaseUrl
from rowscope.db.policy import load_policy
from rowscope.embeddings import build_embedder
from rowscope.server.runtime import Runtime
from rowscope.server.settings import Settings
from rowscope.tools import register_tools

INSTRUCTIONS = (
    "rowscope gives you the signed-in user's own data: query_records / count_records read their "
    "records, list_sparks and search_knowledge read the knowledge of the sparks they may use, "
    "add_training_content / remove_training_content change a spark's knowledge. Every call is "
    "limited to this one user; there is no way to reach anyone else's rows."
)


def build_runtime(settings: Settings, database_url: str, *, stdio_user: uuid.UUID | None = None) -> Runtime:
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    return Runtime(
        settings=settings,
        database=Database(DatabaseUrl.parse(database_url), pool_size=settings.pool_size),
        policy_file=load_policy(settings.policy),
        embedder=build_embedder(
            openai_api_key=key,
            openai_base_url=settings.openai_base_url,
            openai_model=settings.embedding_model,
            dimensions=1536,
            batch_size=settings.embedding_batch_size,
        ),
        stdio_user=stdio_user,
    )


def build_mcp(runtime: Runtime, *, verifier: RowscopeVerifier | None = None) -> MCPServer[Runtime]:
    @contextlib.asynccontextmanager
    async def lifespan(_: MCPServer[Runtime]) -> AsyncIterator[Runtime]:
        await runtime.start()
        try:
            yield runtime
        finally:
            await runtime.close()

    auth = None
    if verifier is not None:
        settings = runtime.settings
        auth = AuthSettings(
            issuer_url=settings.base_url,
            resource_server_url=settings.resource_url,
            required_scopes=[READ_SCOPE],
            validate_token_resource=True,
        )
    server: MCPServer[Runtime] = MCPServer(
        "rowscope",
        title="rowscope",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        token_verifier=verifier,
        auth=auth,
    )
    register_tools(server, runtime.policy_file)
    return server


def build_http_app(runtime: Runtime) -> Starlette:
    settings = runtime.settings
    verifier = RowscopeVerifier(runtime.database, settings.resource_url)
    server = build_mcp(runtime, verifier=verifier)
    public_host = urlsplit(settings.base_url).netloc
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=sorted(
            {public_host, f"127.0.0.1:{settings.port}", f"localhost:{settings.port}", *settings.allowed_hosts}
        ),
        allowed_origins=sorted({settings.base_url, *(f"https://{h}" for h in settings.allowed_hosts)}),
    )
    mcp_app = server.streamable_http_app(
        streamable_http_path="/mcp",
        stateless_http=True,  # every piece of state is in PostgreSQL: any worker can answer any call
        json_response=True,
        transport_security=security,
        host=settings.host,
    )

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "version": __version__})

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with server.session_manager.run():
            yield {}

    return Starlette(routes=[Route("/health", health), Mount("/", app=mcp_app)], lifespan=lifespan)
