"""The resource server's guard in front of ``/mcp`` (MCP authorization, "Access Token Usage").

* No bearer token: 401 with ``WWW-Authenticate: Bearer resource_metadata="<absolute PRM URL>",
  scope="…"`` (RFC 9728 §5.1, RFC 6750 §3 — no ``error`` code when no token was sent, §3.1). The
  PRM URL is on the host the request came on when the server accepts that host (a client on
  ``localhost`` reads the metadata of ``localhost``), else on the public URL.
* A token that is unknown, expired, revoked, or issued for another audience: 401
  ``error="invalid_token"``. Audience is the exact ``resource`` the token was bound to
  (RFC 8707), which must be this MCP endpoint on one of the hosts the server accepts (the same
  server by another name); tokens for any other server are refused, never passed through.
* A token without ``rowscope:read``: 403 ``insufficient_scope``. A ``tools/call`` of a tool that
  writes, with a token lacking ``rowscope:write``: 403 ``insufficient_scope`` naming both scopes,
  which lets clients step up (MCP authorization, "Scope Challenge Handling").
* The database being unreachable while verifying: 503 with ``Retry-After``, not a 401 that would
  send the user through sign-in again.

The verified token is put where the MCP SDK's ``get_access_token()`` finds it, so tools read the
user from it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.authentication import AuthCredentials
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from rowscope.auth import scopes
from rowscope.auth.verifier import RowscopeVerifier, VerifierUnavailable
from rowscope.server.bodies import read_body, replay


class BearerGuard:
    def __init__(
        self,
        app: ASGIApp,
        verifier: RowscopeVerifier,
        *,
        resource_url: str,
        host_resources: dict[str, str],
        write_tools: frozenset[str],
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.resources = frozenset(host_resources.values())
        # Host header -> the absolute PRM URL a challenge names; the public one for other hosts.
        self.metadata_urls = {host: _metadata_url(url) for host, url in host_resources.items()}
        self.public_metadata_url = _metadata_url(resource_url)
        self.write_tools = write_tools
        self.everything = scopes.render(scopes.SUPPORTED)  # the scopes every challenge names

    def _challenge(
        self, status: int, error: str | None, description: str, scope: str, headers: dict[bytes, bytes]
    ) -> Response:
        host = headers.get(b"host", b"").decode("latin-1").lower()
        metadata_url = self.metadata_urls.get(host, self.public_metadata_url)
        parts = [f'resource_metadata="{metadata_url}"', f'scope="{scope}"']
        if error:
            parts = [f'error="{error}"', f'error_description="{description}"', *parts]
        body = {"error": error or "unauthorized", "error_description": description}
        return JSONResponse(
            body, status_code=status, headers={"WWW-Authenticate": "Bearer " + ", ".join(parts)}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/mcp" or path.startswith("/mcp/")):
            await self.app(scope, receive, send)  # not the MCP endpoint: the app answers 404 / 405
            return
        everything = self.everything
        headers = dict(scope["headers"])
        header = headers.get(b"authorization", b"").decode("latin-1")
        kind, _, credential = header.partition(" ")
        if kind.lower() != "bearer" or not credential.strip():
            await self._challenge(401, None, "Authentication required", everything, headers)(
                scope, receive, send
            )
            return
        try:
            token = await self.verifier.verify_token(credential.strip())
        except VerifierUnavailable:
            unavailable = JSONResponse(
                {"error": "temporarily_unavailable", "error_description": "try again shortly"},
                status_code=503,
                headers={"Retry-After": "2"},
            )
            await unavailable(scope, receive, send)
            return
        if not self._valid(token):
            await self._challenge(
                401, "invalid_token", "The access token is not valid here", everything, headers
            )(scope, receive, send)
            return
        assert token is not None
        if scopes.READ not in token.scopes:
            await self._challenge(
                403, "insufficient_scope", "Reading needs rowscope:read", everything, headers
            )(scope, receive, send)
            return
        if scopes.WRITE not in token.scopes and scope.get("method") == "POST":
            body = await read_body(receive)
            if body is None:
                await JSONResponse({"error": "request body too large"}, status_code=413)(scope, receive, send)
                return
            if self._calls_write_tool(body):
                await self._challenge(
                    403, "insufficient_scope", "This tool needs rowscope:write", everything, headers
                )(scope, receive, send)
                return
            receive = replay(body, receive)
        user = AuthenticatedUser(token)
        scope["user"], scope["auth"] = user, AuthCredentials(token.scopes)
        reset = auth_context_var.set(user)
        try:
            await self.app(scope, receive, send)
        finally:
            auth_context_var.reset(reset)

    def _valid(self, token: AccessToken | None) -> bool:
        if token is None or token.resource not in self.resources:
            return False
        return token.expires_at is None or token.expires_at > time.time()

    def _calls_write_tool(self, body: bytes) -> bool:
        try:
            payload: Any = json.loads(body)
        except (ValueError, RecursionError):  # bad UTF-8 or JSON, too many digits, too deep
            return False  # not JSON-RPC; the MCP transport answers it with a parse error
        messages = payload if isinstance(payload, list) else [payload]
        return any(
            isinstance(m, dict)
            and m.get("method") == "tools/call"
            and isinstance(m.get("params"), dict)
            and m["params"].get("name") in self.write_tools
            for m in messages
        )


def _metadata_url(resource: str) -> str:
    """RFC 9728 §3.1: the well-known URL, the resource's path (``/mcp``) inserted after it."""
    origin = resource.removesuffix("/mcp")
    return f"{origin}/.well-known/oauth-protected-resource/mcp"
