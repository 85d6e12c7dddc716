"""The authorization endpoint (OAuth 2.1 §4.1.1) with sign-in, sign-out, consent and connections
pages.

Validation happens in two stages, as RFC 6749 §4.1.2.1 requires:

1. ``client_id`` and ``redirect_uri``: while either is unknown or unregistered, nothing is sent to
   the redirect URI; the browser gets an error page.
2. Everything else — ``response_type=code``; PKCE with ``code_challenge_method=S256`` only (a
   missing challenge or ``plain`` is refused, OAuth 2.1 §4.1.1); ``resource`` naming exactly this
   server's MCP endpoint, on its public host or another host it accepts (RFC 8707 §2, else
   ``invalid_target``); known scopes (a default when none is asked) —
   fails by redirecting with ``error``, ``state`` and ``iss`` (RFC 9207 §2).

A signed-in user who already approved every requested scope for the client gets a code at once;
otherwise the consent page asks. Its POST carries a CSRF token bound to the session and to the
client, and every parameter is validated again. Codes live ``code_ttl`` seconds. The consent page
names the host of a metadata-document client's ``client_id`` (what the name was fetched from), and
says in plain words that a dynamically registered client is unverified: its name is whatever it
called itself. Form posts are read up to ``MAX_FORM`` bytes (413 past it).

Where the policy names the application's own users table, it decides who may sign in
(``db/accounts.py``): a password sign-in, and every code issued for a session, looks the user's
subject up in it again, and an email it lacks gets no session and no code.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.datastructures import ImmutableMultiDict
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from rowscope.auth import pages, passwords, scopes, sessions, store, throttle
from rowscope.auth.clients import find_client, redirect_uri_matches
from rowscope.auth.context import ACCOUNT_REFUSED, NOT_AN_APPLICATION_USER, AuthContext
from rowscope.auth.errors import (
    AccessDenied,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    TemporarilyUnavailable,
    UnauthorizedClient,
    UnsupportedResponseType,
)
from rowscope.db.accounts import AccountError, NotAnApplicationUser
from rowscope.server.bodies import request_form

log = logging.getLogger(__name__)

PARAMS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
    "resource",
)
VERIFIER_CHARS = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
MAX_STATE = 2048
MAX_FORM = 16 * 1024  # the consent form carries the request's parameters; each is bounded far below


class PageError(Exception):
    """A request that must not be redirected back to the client (stage 1)."""


@dataclass(frozen=True)
class AuthorizationRequest:
    client: store.Client
    redirect_uri: str
    scopes: list[str]
    state: str | None
    code_challenge: str
    resource: str

    def params(self) -> dict[str, str]:
        """The parameters that reproduce this request (for the consent form)."""
        values = {
            "response_type": "code",
            "client_id": self.client.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": scopes.render(self.scopes),
            "code_challenge": self.code_challenge,
            "code_challenge_method": "S256",
            "resource": self.resource,
        }
        if self.state is not None:
            values["state"] = self.state
        return values


def _single(data: ImmutableMultiDict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The request's parameters sent once, and the names of those repeated (RFC 6749 §3.1)."""
    values: dict[str, str] = {}
    repeated: list[str] = []
    for key in PARAMS:
        found = data.getlist(key)
        if len(found) > 1:
            repeated.append(key)
        elif found and isinstance(found[0], str):
            values[key] = found[0]
    return values, repeated


def with_query(uri: str, params: dict[str, str]) -> str:
    parts = urlsplit(uri)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


async def validate(
    auth: AuthContext, conn: AsyncConnection, data: ImmutableMultiDict[str, Any]
) -> tuple[AuthorizationRequest | None, str | None, dict[str, str], OAuthError | None]:
    """(request, redirect_uri, params, error): a valid request, or the error to redirect with.
    Raises PageError while the client or redirect URI cannot be trusted."""
    params, repeated = _single(data)
    if {"client_id", "redirect_uri"} & set(repeated):
        raise PageError("The client_id or redirect_uri is repeated.")
    client = await find_client(conn, params.get("client_id", ""), auth.fetcher)
    if client is None:
        raise PageError("This application is not registered with rowscope.")
    redirect_uri = params.get("redirect_uri")
    if redirect_uri is None and len(client.redirect_uris) == 1:
        redirect_uri = client.redirect_uris[0]
    if redirect_uri is None or not redirect_uri_matches(redirect_uri, client.redirect_uris):
        raise PageError("The redirect URI is not one this application registered.")
    state = params.get("state")
    try:
        # RFC 6749 §4.1.2.1: once the redirect URI is trusted, other repeats go back to the client.
        if repeated:
            raise InvalidRequest(f"{', '.join(repeated)} repeated")
        if state is not None and len(state) > MAX_STATE:
            raise InvalidRequest("state is too long")
        if params.get("response_type") != "code":
            raise UnsupportedResponseType("only response_type=code is supported")
        if "authorization_code" not in client.grant_types:
            raise UnauthorizedClient("this client did not register the authorization_code grant")
        challenge = params.get("code_challenge")
        if challenge is None:
            raise InvalidRequest("PKCE is required: send code_challenge with code_challenge_method=S256")
        if params.get("code_challenge_method") != "S256":
            raise InvalidRequest("code_challenge_method must be S256")
        if not VERIFIER_CHARS.match(challenge):
            raise InvalidRequest("code_challenge is not a base64url SHA-256 value")
        resource = params.get("resource")
        if resource is None:
            raise InvalidTarget(f"resource is required and must be {auth.resource}")
        if not auth.is_resource(resource):
            raise InvalidTarget(f"this server issues tokens only for {auth.resource}")
        requested = params.get("scope")
        if requested is None or not requested.strip():
            chosen = scopes.parse(client.scope) or list(scopes.DEFAULT)
        else:
            chosen = scopes.parse(requested)
            unknown = set(requested.split()) - set(scopes.SUPPORTED) - scopes.IGNORED
            if unknown or not chosen:
                raise InvalidScope(f"supported scopes: {' '.join(scopes.SUPPORTED)}")
    except OAuthError as error:
        return None, redirect_uri, params, error
    request = AuthorizationRequest(client, redirect_uri, chosen, state, challenge, resource)
    return request, redirect_uri, params, None


def error_redirect(auth: AuthContext, redirect_uri: str, error: OAuthError, state: str | None) -> Response:
    query = {"error": error.error, "error_description": error.description, "iss": auth.issuer}
    if state is not None:
        query["state"] = state
    return RedirectResponse(with_query(redirect_uri, query), status_code=303)


async def grant(
    auth: AuthContext, conn: AsyncConnection, request: AuthorizationRequest, user: uuid.UUID
) -> Response:
    # A session outlives its sign-in: the application's users table is asked again before a code
    # (and so a token) is issued for it.
    try:
        if await auth.admit(conn, user):
            auth.forget(user)
    except AccountError as exc:
        log.info("authorization refused: %s", exc)
        message = NOT_AN_APPLICATION_USER if isinstance(exc, NotAnApplicationUser) else ACCOUNT_REFUSED
        return pages.error_page("Cannot authorize this application", message, 403)
    code = await store.issue_code(
        conn,
        client_id=request.client.client_id,
        user_id=user,
        redirect_uri=request.redirect_uri,
        scope=scopes.render(request.scopes),
        resource=request.resource,
        code_challenge=request.code_challenge,
        ttl=auth.code_ttl,
    )
    query = {"code": code, "iss": auth.issuer}
    if request.state is not None:
        query["state"] = request.state
    return RedirectResponse(with_query(request.redirect_uri, query), status_code=303)


async def signed_in(
    auth: AuthContext, conn: AsyncConnection, request: Request
) -> tuple[uuid.UUID, str, str] | None:
    """(user id, email, session id) of the browser's live session."""
    token = sessions.session_id(request, auth.settings)
    if not token:
        return None
    found = await store.session_user(conn, token)
    return None if found is None else (found[0], found[1], token)


def to_signin(return_to: str) -> Response:
    return RedirectResponse("/signin?" + urlencode({"return_to": return_to}), status_code=303)


def safe_return_to(value: object) -> str:
    """Only rowscope's own pages are valid destinations after signing in (no open redirect)."""
    if isinstance(value, str) and value.startswith(("/authorize?", "/connections")) and "\\" not in value:
        return value
    return "/connections"


def routes(auth: AuthContext) -> list[Route]:
    async def authorize(request: Request) -> Response:
        data: ImmutableMultiDict[str, Any] = request.query_params
        if request.method == "POST":
            form = await request_form(request, MAX_FORM)
            if form is None:
                return pages.too_large(MAX_FORM)
            data = form
        async with auth.database.service_transaction() as conn:
            try:
                valid, redirect_uri, params, error = await validate(auth, conn, data)
            except PageError as exc:
                return pages.error_page("Cannot authorize this application", str(exc))
            except TemporarilyUnavailable as busy:
                page = pages.error_page("Try again shortly", busy.description, busy.status)
                page.headers.update(busy.headers())
                return page
            assert redirect_uri is not None
            if error is not None or valid is None:
                assert error is not None
                return error_redirect(auth, redirect_uri, error, params.get("state"))
            user = await signed_in(auth, conn, request)
            if request.method == "GET":
                if user is None:
                    return to_signin("/authorize?" + urlencode(valid.params()))
                if set(valid.scopes) <= await store.consented_scopes(conn, user[0], valid.client.client_id):
                    return await grant(auth, conn, valid, user[0])
                csrf = sessions.csrf_token(user[2], f"consent:{valid.client.client_id}")
                return pages.consent_page(
                    client_name=valid.client.client_name,
                    client_id=valid.client.client_id,
                    verified=valid.client.kind == "document",
                    redirect_uri=valid.redirect_uri,
                    scopes=valid.scopes,
                    email=user[1],
                    csrf=csrf,
                    signout_csrf=sessions.csrf_token(user[2], "signout"),
                    params=valid.params(),
                )
            # The consent decision.
            if user is None or not sessions.csrf_ok(
                user[2], f"consent:{valid.client.client_id}", data.get("csrf_token")
            ):
                return pages.error_page(
                    "Request expired", "This form is no longer valid; start again from the application.", 403
                )
            if data.get("action") != "approve":
                return error_redirect(
                    auth, valid.redirect_uri, AccessDenied("the user denied access"), valid.state
                )
            await store.remember_consent(conn, user[0], valid.client.client_id, set(valid.scopes))
            return await grant(auth, conn, valid, user[0])

    async def signin(request: Request) -> Response:
        settings = auth.settings
        if request.method == "GET":
            fresh = sessions.new_signin_secret()
            response: Response = pages.signin_page(
                csrf=sessions.csrf_token(fresh, "signin"),
                return_to=safe_return_to(request.query_params.get("return_to")),
                notice="You are signed out." if request.query_params.get("signed_out") == "1" else None,
                oidc_name=settings.oidc_name if settings.oidc_issuer else None,
            )
            sessions.set_cookie(response, settings, sessions.signin_cookie(settings), fresh, 1800)
            return response
        form = await request_form(request, MAX_FORM)
        if form is None:
            return pages.too_large(MAX_FORM)
        return_to = safe_return_to(form.get("return_to"))
        secret = sessions.signin_secret(request, settings)
        if not sessions.csrf_ok(secret, "signin", form.get("csrf_token")):
            return pages.error_page("Request expired", "This form is no longer valid; reload the page.", 403)
        assert secret is not None
        email, password = form.get("email"), form.get("password")

        def again(error: str, status: int | None = None) -> Response:
            return pages.signin_page(
                csrf=sessions.csrf_token(secret, "signin"),
                return_to=return_to,
                error=error,
                email=email if isinstance(email, str) else "",
                oidc_name=settings.oidc_name if settings.oidc_issuer else None,
                status=status,
            )

        if not isinstance(email, str) or not isinstance(password, str):
            return again("The email or password is not right.")
        # Counted (and committed) before the password is verified; see rowscope/auth/throttle.py.
        async with auth.database.service_transaction() as conn:
            recorded = await throttle.attempt(
                conn, settings, email, request.client.host if request.client else "unknown"
            )
            if isinstance(recorded, throttle.Refused):
                refused = again(recorded.message, 429)
                refused.headers["Retry-After"] = str(recorded.retry_after)
                return refused
            credential = await passwords.find_credential(conn, email)
        # In a worker thread and outside any transaction: no connection is held meanwhile.
        user = None
        if len(password) <= 1024:
            user = await passwords.verify(credential, password, auth.hashing)
        if user is None:
            return again("The email or password is not right.")
        not_admitted: str | None = None
        async with auth.database.service_transaction() as conn:
            await throttle.succeeded(conn, recorded)
            # The application's own users table, if the policy names one, decides who signs in.
            try:
                changed = await auth.admit(conn, user)
            except NotAnApplicationUser as exc:
                log.info("sign-in refused: %s", exc)
                not_admitted = NOT_AN_APPLICATION_USER
            except AccountError as exc:
                log.warning("sign-in refused: %s", exc)
                not_admitted = ACCOUNT_REFUSED
            else:
                token = await store.create_session(conn, user, auth.session_ttl)
        if not_admitted is not None:
            return again(not_admitted, 403)
        if changed:
            auth.forget(user)
        response = RedirectResponse(return_to, status_code=303)
        sessions.set_cookie(
            response,
            settings,
            sessions.session_cookie(settings),
            token,
            int(auth.session_ttl.total_seconds()),
        )
        sessions.delete_cookie(response, settings, sessions.signin_cookie(settings))
        return response

    async def connections(request: Request) -> Response:
        async with auth.database.service_transaction() as conn:
            user = await signed_in(auth, conn, request)
            if user is None:
                return to_signin("/connections")
            if request.method == "POST":
                form = await request_form(request, MAX_FORM)
                if form is None:
                    return pages.too_large(MAX_FORM)
                client_id = form.get("client_id")
                if not sessions.csrf_ok(user[2], "connections", form.get("csrf_token")) or not isinstance(
                    client_id, str
                ):
                    return pages.error_page(
                        "Request expired", "This form is no longer valid; reload the page.", 403
                    )
                await store.forget_connection(conn, user[0], client_id)
                return RedirectResponse("/connections", status_code=303)
            listed = await store.user_connections(conn, user[0])
        return pages.connections_page(
            email=user[1],
            connections=listed,
            csrf=sessions.csrf_token(user[2], "connections"),
            signout_csrf=sessions.csrf_token(user[2], "signout"),
            now=store.now(),
        )

    async def signout(request: Request) -> Response:
        """End this browser's session (a POST with the CSRF token of its pages), then show the
        sign-in page, which comes back to ``return_to`` (the consent page's "Not you?")."""
        settings = auth.settings
        if request.method != "POST":
            return RedirectResponse("/connections", status_code=303)  # where the button is
        form = await request_form(request, MAX_FORM)
        if form is None:
            return pages.too_large(MAX_FORM)
        token = sessions.session_id(request, settings)
        if token is not None:
            if not sessions.csrf_ok(token, "signout", form.get("csrf_token")):
                return pages.error_page(
                    "Request expired", "This form is no longer valid; reload the page.", 403
                )
            async with auth.database.service_transaction() as conn:
                await store.end_session(conn, token)
        query = {"return_to": safe_return_to(form.get("return_to")), "signed_out": "1"}
        response = RedirectResponse("/signin?" + urlencode(query), status_code=303)
        sessions.delete_cookie(response, settings, sessions.session_cookie(settings))
        return response

    return [
        Route("/authorize", authorize, methods=["GET", "POST"]),
        Route("/signin", signin, methods=["GET", "POST"]),
        Route("/signout", signout, methods=["GET", "POST"]),
        Route("/connections", connections, methods=["GET", "POST"]),
    ]
