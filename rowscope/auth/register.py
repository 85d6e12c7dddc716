"""RFC 7591 dynamic client registration (open, as MCP clients expect).

Registered metadata is validated here, in one place: redirect URIs by the policy in
``clients.py``, auth method among ``none`` / ``client_secret_basic`` / ``client_secret_post``,
grant types within ``authorization_code`` and ``refresh_token``, response type ``code``. Scope
values rowscope does not know are dropped rather than refused (Claude has registered with
``scope: "claudeai"``). Confidential clients get a secret, shown once and stored as a SHA-256.
The URIs a page may link or load (``client_uri``, ``logo_uri``, ``tos_uri``, ``policy_uri``) must
be https, or http on a loopback host, like redirect URIs; anything else is
``invalid_client_metadata``.

Registration is open, so it is bounded three ways (our choices):

* the body is read only up to ``MAX_BODY`` bytes, whatever its Content-Length says (or whether it
  says anything); past that the answer is 413 at once and the connection is closed;
* each client address may register ``register_max_per_address`` clients within
  ``register_window`` seconds (``throttle.py``, kind ``register``): then 429 with ``Retry-After``;
* at most ``max_unused_clients`` registered clients younger than ``unused_client_ttl`` may have
  never got a token: then 429 with ``Retry-After`` (when the oldest of them ages out; ``purge.py``
  deletes it then). A client that gets a token leaves the count.

Both limits are counted, and the client inserted, in one transaction under advisory locks, so
concurrent registrations cannot overshoot them; a refused registration records nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rowscope.auth import scopes, store, throttle
from rowscope.auth.clients import AUTH_METHODS, redirect_uri_problem
from rowscope.auth.context import AuthContext
from rowscope.auth.errors import (
    NO_STORE,
    InvalidClientMetadata,
    InvalidRedirectUri,
    OAuthError,
    RequestTooLarge,
    TooManyRequests,
    error_response,
)
from rowscope.auth.token import post_route
from rowscope.server.bodies import request_body

MAX_BODY = 64 * 1024
GRANT_TYPES = {"authorization_code", "refresh_token"}
URI_METADATA = ("client_uri", "logo_uri", "tos_uri", "policy_uri")
KEPT_METADATA = (*URI_METADATA, "application_type", "software_id", "software_version")


def _string_list(data: dict[str, Any], key: str, default: list[str]) -> list[str]:
    value = data.get(key, default)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidClientMetadata(f"{key} must be a list of strings")
    return value


def validate(data: Any) -> dict[str, Any]:
    """The client row to store for registration request ``data``, or an RFC 7591 §3.2.2 error."""
    if not isinstance(data, dict):
        raise InvalidClientMetadata("the registration request must be a JSON object")
    redirect_uris = _string_list(data, "redirect_uris", [])
    if not redirect_uris or len(redirect_uris) > 20:
        raise InvalidRedirectUri("register between 1 and 20 redirect_uris")
    for uri in redirect_uris:
        problem = redirect_uri_problem(uri)
        if problem:
            raise InvalidRedirectUri(problem)
    method = data.get("token_endpoint_auth_method", "client_secret_basic")
    if method not in AUTH_METHODS:
        raise InvalidClientMetadata(f"token_endpoint_auth_method must be one of {', '.join(AUTH_METHODS)}")
    grant_types = _string_list(data, "grant_types", ["authorization_code"])
    if not grant_types or not set(grant_types) <= GRANT_TYPES or "authorization_code" not in grant_types:
        raise InvalidClientMetadata("grant_types must include authorization_code and may add refresh_token")
    if _string_list(data, "response_types", ["code"]) != ["code"]:
        raise InvalidClientMetadata('response_types must be ["code"]')
    name = data.get("client_name")
    if name is not None and (not isinstance(name, str) or not name.strip() or len(name) > 200):
        raise InvalidClientMetadata("client_name must be a non-empty string of at most 200 characters")
    scope = data.get("scope")
    if scope is not None and not isinstance(scope, str):
        raise InvalidClientMetadata("scope must be a space-separated string")
    for key in URI_METADATA:
        if data.get(key) is not None and (problem := redirect_uri_problem(data[key], key)):
            raise InvalidClientMetadata(problem)
    return {
        "client_name": (name or "").strip() or "Unnamed client",
        "redirect_uris": redirect_uris,
        "grant_types": sorted(set(grant_types)),
        "token_endpoint_auth_method": method,
        "scope": scopes.render(scopes.parse(scope)) or None,
        "kind": "registered",
        "client_metadata": {k: data[k] for k in KEPT_METADATA if isinstance(data.get(k), str)},
    }


async def _admit(auth: AuthContext, conn: Any, address: str) -> None:
    """Count this registration against its address and the quota of unused clients, or refuse it."""
    settings = auth.settings
    recorded = await throttle.record(
        conn,
        [
            throttle.Limit(
                throttle.REGISTER,
                address,
                settings.register_max_per_address,
                dt.timedelta(seconds=settings.register_window),
            )
        ],
    )
    if isinstance(recorded, throttle.Refused):
        raise TooManyRequests("too many client registrations from this address", recorded.retry_after)
    ttl = dt.timedelta(seconds=settings.unused_client_ttl)
    wait = await store.unused_quota_wait(conn, settings.max_unused_clients, ttl)
    if wait is not None:
        raise TooManyRequests(
            "too many registered clients have not been used yet; try again later", math.ceil(wait)
        )


def routes(auth: AuthContext) -> list[Route]:
    async def register(request: Request) -> Response:
        try:
            body = await request_body(request, MAX_BODY)
            if body is None:
                raise RequestTooLarge(f"the registration request is larger than {MAX_BODY} bytes")
            try:
                data = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
                raise InvalidClientMetadata("the registration request is not valid JSON") from exc
            row = validate(data)
            client_id = str(uuid.uuid4())
            secret = (
                None if row["token_endpoint_auth_method"] == "none" else store.new_secret(store.SECRET_PREFIX)
            )
            async with auth.database.service_transaction() as conn:
                await _admit(auth, conn, request.client.host if request.client else "unknown")
                await store.save_client(
                    conn,
                    {**row, "client_id": client_id, "secret_hash": store.digest(secret) if secret else None},
                )
        except OAuthError as error:
            return error_response(error)
        answer: dict[str, Any] = {
            "client_id": client_id,
            "client_id_issued_at": int(time.time()),
            "client_name": row["client_name"],
            "redirect_uris": row["redirect_uris"],
            "grant_types": row["grant_types"],
            "response_types": ["code"],
            "token_endpoint_auth_method": row["token_endpoint_auth_method"],
            **row["client_metadata"],
        }
        if row["scope"]:
            answer["scope"] = row["scope"]
        if secret:
            answer |= {"client_secret": secret, "client_secret_expires_at": 0}
        return JSONResponse(answer, status_code=201, headers=NO_STORE)

    return [post_route("/register", register)]
