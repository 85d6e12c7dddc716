"""The token endpoint (OAuth 2.1 §3.2): the authorization-code and refresh-token grants.

* ``authorization_code``: the client authenticates as it registered; the code is consumed
  atomically (a replay revokes what the first redemption issued); it must belong to this client,
  with the same ``redirect_uri`` (RFC 6749 §4.1.3), a PKCE verifier whose S256 matches the stored
  challenge (RFC 7636 §4.6), and — when sent — the same ``resource`` (RFC 8707 §2.2).
* ``refresh_token``: rotation on every use; a rotated token presented again revokes its family
  (OAuth 2.1 §4.3.1). A narrower ``scope`` may be asked; a wider one is ``invalid_scope``.

Every response carries ``Cache-Control: no-store`` (RFC 6749 §5.1).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rowscope.auth import scopes, store
from rowscope.auth.authorize import VERIFIER_CHARS
from rowscope.auth.clients import authenticate_client
from rowscope.auth.context import AuthContext
from rowscope.auth.errors import (
    NO_STORE,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    RequestTooLarge,
    UnauthorizedClient,
    UnsupportedGrantType,
    error_response,
)
from rowscope.server.bodies import request_form

MAX_BODY = 16 * 1024


def s256(verifier: str) -> str:
    """RFC 7636 §4.2: BASE64URL(SHA256(ASCII(code_verifier))) without padding."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


async def read_form(request: Request) -> dict[str, str]:
    """The urlencoded body as single values; a repeated parameter is an error (RFC 6749 §3.2).
    At most ``MAX_BODY`` bytes are read, whatever the Content-Length says."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise InvalidRequest("send parameters as application/x-www-form-urlencoded")
    form = await request_form(request, MAX_BODY)
    if form is None:
        raise RequestTooLarge(f"the request body is larger than {MAX_BODY} bytes")
    values: dict[str, str] = {}
    for key in form:
        found = form.getlist(key)
        if len(found) > 1:
            raise InvalidRequest(f"{key} is repeated")
        if isinstance(found[0], str):
            values[key] = found[0]
    return values


def post_route(path: str, endpoint: Callable[[Request], Awaitable[Response]]) -> Route:
    """A POST-only endpoint that answers other methods 405 itself: a Route limited to POST would
    let them fall through to the bearer guard mounted at ``/`` and get a misleading 401."""

    async def post_only(request: Request) -> Response:
        if request.method != "POST":
            return Response(status_code=405, headers={"Allow": "POST"})
        return await endpoint(request)

    return Route(path, post_only, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])


def token_body(issued: store.IssuedTokens) -> dict[str, Any]:
    return {
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "refresh_token": issued.refresh_token,
        "scope": issued.scope,
    }


def routes(auth: AuthContext) -> list[Route]:
    async def authorization_code(conn: Any, client: store.Client, form: dict[str, str]) -> dict[str, Any]:
        code, verifier = form.get("code"), form.get("code_verifier")
        if not code:
            raise InvalidRequest("code is required")
        if not verifier:
            raise InvalidRequest("code_verifier is required (PKCE)")
        if not VERIFIER_CHARS.match(verifier):
            raise InvalidGrant("code_verifier must be 43-128 characters of [A-Za-z0-9-._~]")
        outcome, row = await store.consume_code(conn, code)
        if outcome == "replayed":
            raise InvalidGrant("this code was already used; the tokens it issued are revoked")
        if row is None:
            raise InvalidGrant("the code is invalid or expired")
        # Checks after consumption on purpose: a code presented wrongly is spent, not retried.
        if row.client_id != client.client_id:
            raise InvalidGrant("the code was issued to another client")
        if "redirect_uri" in form and form["redirect_uri"] != row.redirect_uri:
            raise InvalidGrant("redirect_uri does not match the authorization request")
        if "redirect_uri" not in form and len(client.redirect_uris) > 1:
            raise InvalidRequest("redirect_uri is required")
        if not secrets.compare_digest(s256(verifier), row.code_challenge):
            raise InvalidGrant("code_verifier does not match the code_challenge")
        if "resource" in form and form["resource"] != row.resource:
            raise InvalidTarget("resource does not match the authorization request")
        issued = await store.issue_tokens(
            conn,
            client_id=client.client_id,
            user_id=row.user_id,
            scope=row.scope,
            resource=row.resource,
            access_ttl=auth.access_ttl,
            refresh_ttl=auth.refresh_ttl,
            code_id=row.id,
        )
        return token_body(issued)

    async def refresh_token(conn: Any, client: store.Client, form: dict[str, str]) -> dict[str, Any]:
        presented = form.get("refresh_token")
        if not presented:
            raise InvalidRequest("refresh_token is required")
        if "refresh_token" not in client.grant_types:
            raise UnauthorizedClient("this client did not register the refresh_token grant")
        outcome, row = await store.rotate_refresh_token(conn, presented, client.client_id)
        if outcome == "reused":
            raise InvalidGrant("this refresh token was already used; its whole family is revoked")
        if row is None:
            raise InvalidGrant("the refresh token is invalid, expired or revoked")
        try:
            granted = row.scope.split()
            if "scope" in form:
                asked = form["scope"].split()
                if not asked or not set(asked) <= set(granted):
                    raise InvalidScope("a refresh may only narrow the granted scope")
                granted = asked
            if "resource" in form and form["resource"] != row.resource:
                raise InvalidTarget("resource does not match the original grant")
        except OAuthError:
            # Refused, nothing issued: the token stays usable. Left spent, the client's retry with
            # it would look like reuse and revoke the whole family.
            await store.release_refresh_token(conn, row.id)
            raise
        issued = await store.issue_tokens(
            conn,
            client_id=client.client_id,
            user_id=row.user_id,
            scope=scopes.render(granted),
            resource=row.resource,
            access_ttl=auth.access_ttl,
            refresh_ttl=auth.refresh_ttl,
            family_id=row.family_id,
        )
        return token_body(issued)

    grants = {"authorization_code": authorization_code, "refresh_token": refresh_token}

    async def token(request: Request) -> Response:
        try:
            form = await read_form(request)
            grant = grants.get(form.get("grant_type", ""))
            if grant is None:
                raise UnsupportedGrantType("grant_type must be authorization_code or refresh_token")
            # Failed grants that changed state (a replayed code, a reused refresh token) must
            # still commit their revocations, so the transaction commits on OAuth errors too.
            async with auth.database.service_transaction() as conn:
                client = await authenticate_client(conn, request, form, auth.fetcher)
                try:
                    body = await grant(conn, client, form)
                except OAuthError as error:
                    failure: OAuthError | None = error
                else:
                    failure = None
                    await store.touch_client(conn, client.client_id)
            if failure is not None:
                raise failure
        except OAuthError as error:
            return error_response(error)
        return JSONResponse(body, headers=NO_STORE)

    return [post_route("/token", token)]
