"""Discovery: RFC 8414 authorization-server metadata and RFC 9728 protected-resource metadata.

The protected-resource document is served at both ``/.well-known/oauth-protected-resource/mcp``
(RFC 9728 §3.1 path insertion) and the root variant, since clients probe either. Its
``scopes_supported`` lists both scopes on purpose: the MCP SDK client requests exactly what it
finds there. Its ``resource`` is the MCP URL on the host the request came on, when that host is one
the server accepts (``AuthContext.resource_on``): a client that connected to
``http://localhost:8000/mcp`` must find exactly that (RFC 9728 §3.3), though the public URL says
127.0.0.1. The issuer stays the one public URL.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rowscope.auth import scopes
from rowscope.auth.clients import AUTH_METHODS
from rowscope.auth.context import AuthContext

CORS = {"Access-Control-Allow-Origin": "*", "Cache-Control": "public, max-age=3600"}
PREFLIGHT = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, OPTIONS",
    "Access-Control-Allow-Headers": "MCP-Protocol-Version, Content-Type",
    "Access-Control-Max-Age": "86400",
}


def authorization_server_metadata(auth: AuthContext) -> dict[str, Any]:
    issuer = auth.issuer
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "registration_endpoint": f"{issuer}/register",
        "revocation_endpoint": f"{issuer}/revoke",
        "scopes_supported": list(scopes.SUPPORTED),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "revocation_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
        "client_id_metadata_document_supported": True,
        "service_documentation": f"{issuer}/connections",
    }


def protected_resource_metadata(auth: AuthContext, host: str | None = None) -> dict[str, Any]:
    return {
        "resource": auth.resource_on(host),
        "authorization_servers": [auth.issuer],
        "scopes_supported": list(scopes.SUPPORTED),
        "bearer_methods_supported": ["header"],
        "resource_name": "rowscope",
    }


def routes(auth: AuthContext) -> list[Route]:
    async def as_metadata(request: Request) -> Response:
        if request.method == "OPTIONS":  # a browser-based client's CORS preflight
            return Response(status_code=204, headers=PREFLIGHT)
        return JSONResponse(authorization_server_metadata(auth), headers=CORS)

    async def pr_metadata(request: Request) -> Response:
        if request.method == "OPTIONS":
            return Response(status_code=204, headers=PREFLIGHT)
        host = request.headers.get("host")
        # Vary: the document differs by Host, so no cache may hand one host's to another.
        return JSONResponse(protected_resource_metadata(auth, host), headers=CORS | {"Vary": "Host"})

    return [
        Route("/.well-known/oauth-authorization-server", as_metadata, methods=["GET", "OPTIONS"]),
        Route("/.well-known/oauth-protected-resource", pr_metadata, methods=["GET", "OPTIONS"]),
        Route("/.well-known/oauth-protected-resource/mcp", pr_metadata, methods=["GET", "OPTIONS"]),
    ]
