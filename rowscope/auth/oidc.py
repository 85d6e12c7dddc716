"""Signing in through an upstream OpenID Connect provider (the application's own identity: Supabase
Auth, Google, …), as a Relying Party with authlib's Starlette client.

``GET /signin/oidc`` sends the browser to the provider with ``state``, ``nonce`` and PKCE S256
(OIDC Core §3.1.2.1, RFC 7636); ``GET /signin/oidc/callback`` redeems the code and validates the
ID token (OIDC Core §3.1.3.7: signature against the provider's JWKS, ``iss`` equal to the configured
issuer, ``aud`` containing our client id, ``nonce``, ``exp``/``iat``), then opens an ordinary
rowscope sign-in session and returns to the page that asked (``safe_return_to``). State, nonce and
PKCE verifier live in a signed cookie (Starlette's SessionMiddleware) scoped to ``/signin/oidc``,
HttpOnly, SameSite=Lax, Secure over https, for ten minutes; no other route sees it.

Mapping the upstream subject to a rowscope user (``user_profiles.id``), in this order:

1. An identity row ``(provider = issuer, subject = sub)`` exists: that user. Only ``iss`` + ``sub``
   identify an end-user stably (OIDC Core §5.7); a changed email upstream changes nothing here.
2. Otherwise the provider must assert ``email_verified: true`` (the JSON boolean) — our choice. An
   unverified email is refused outright rather than used to create an account: creating one would
   let anyone who can type a victim's address upstream pre-register it here (account
   pre-hijacking), and linking one would hand over the existing account.
3. A user with that (normalised) email exists and has no identity from this issuer yet: the
   identity is linked to it. A user already linked to a *different* subject of the same issuer is
   refused: that is a recycled or reassigned address, not the same person.
4. No such user: one is created with that email (and ``name`` as display name), as applications
   built on Supabase or Google expect on a first sign-in, and the identity is linked to it.

5. When the policy's ``[users]`` table is the application's own (not ``user_profiles``), it must
   have the user's email: its id becomes the account's subject (``db/accounts.py``), refreshed at
   every sign-in. An email it lacks is refused, and an account created by step 4 is not kept.

Inserts use ``ON CONFLICT DO NOTHING`` and re-read, so two first sign-ins racing end on one user.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import httpx2
from authlib.integrations.base_client.errors import MismatchingStateError
from authlib.integrations.starlette_client import OAuth, OAuthError
from joserfc.errors import JoseError
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from rowscope.auth import pages, sessions, store
from rowscope.auth.authorize import safe_return_to
from rowscope.auth.context import ACCOUNT_REFUSED, NOT_AN_APPLICATION_USER, AuthContext
from rowscope.db.accounts import AccountError, NotAnApplicationUser, normalise_email
from rowscope.db.models import UserIdentity, UserProfile
from rowscope.server.settings import Settings

log = logging.getLogger(__name__)

PATH = "/signin/oidc"
CALLBACK = f"{PATH}/callback"
COOKIE_MAX_AGE = 600
RETURN_TO = "rowscope_return_to"
TITLE = "Sign-in refused"


class SigninRefused(Exception):
    """An upstream sign-in that ends on an error page, with no session."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class UpstreamUser:
    issuer: str
    subject: str
    email: str | None
    email_verified: bool
    name: str | None

    @classmethod
    def from_claims(cls, issuer: str, claims: dict[str, Any]) -> UpstreamUser:
        email, name = claims.get("email"), claims.get("name")
        return cls(
            issuer=issuer,
            subject=str(claims["sub"]),
            email=email if isinstance(email, str) else None,
            email_verified=claims.get("email_verified") is True,
            name=name[:200] if isinstance(name, str) and name.strip() else None,
        )


async def _identity_user(conn: AsyncConnection, issuer: str, subject: str) -> uuid.UUID | None:
    found: uuid.UUID | None = (
        await conn.execute(
            select(UserIdentity.user_id).where(
                UserIdentity.provider == issuer, UserIdentity.subject == subject
            )
        )
    ).scalar()
    return found


async def map_user(conn: AsyncConnection, upstream: UpstreamUser, provider_name: str) -> uuid.UUID:
    """The rowscope user of an upstream identity, by the rules in the module docstring."""
    user = await _identity_user(conn, upstream.issuer, upstream.subject)
    if user is not None:
        return user
    if upstream.email is None or not upstream.email_verified:
        raise SigninRefused(
            403, f"Your {provider_name} does not confirm a verified email address, so rowscope cannot use it."
        )
    try:
        email = normalise_email(upstream.email)
    except AccountError as exc:
        raise SigninRefused(403, f"Your {provider_name} gave an email address rowscope cannot use.") from exc
    user = (await conn.execute(select(UserProfile.id).where(UserProfile.email == email))).scalar()
    if user is None:
        created = await conn.execute(
            insert(UserProfile)
            .values(email=email, display_name=upstream.name)
            .on_conflict_do_nothing(index_elements=[UserProfile.email])
            .returning(UserProfile.id)
        )
        user = (
            created.scalar()
            or (await conn.execute(select(UserProfile.id).where(UserProfile.email == email))).scalar_one()
        )
        log.info("created user %s for an upstream sign-in from %s", user, upstream.issuer)
    else:
        other = (
            await conn.execute(
                select(UserIdentity.subject).where(
                    UserIdentity.user_id == user, UserIdentity.provider == upstream.issuer
                )
            )
        ).first()
        if other is not None:
            raise SigninRefused(
                403, f"This email address belongs to another {provider_name}; ask an administrator."
            )
    linked = await conn.execute(
        insert(UserIdentity)
        .values(user_id=user, provider=upstream.issuer, subject=upstream.subject)
        .on_conflict_do_nothing(index_elements=[UserIdentity.provider, UserIdentity.subject])
        .returning(UserIdentity.user_id)
    )
    winner: uuid.UUID | None = linked.scalar() or await _identity_user(
        conn, upstream.issuer, upstream.subject
    )
    assert winner is not None
    return winner


async def admit(auth: AuthContext, conn: AsyncConnection, user: uuid.UUID) -> bool:
    """Step 5 of the module docstring: the application's users table, when the policy names one,
    must have the user's email; a refusal rolls back an account step 4 created."""
    try:
        return await auth.admit(conn, user)
    except NotAnApplicationUser as exc:
        log.info("OIDC sign-in refused: %s", exc)
        raise SigninRefused(403, NOT_AN_APPLICATION_USER) from exc
    except AccountError as exc:
        log.warning("OIDC sign-in refused: %s", exc)
        raise SigninRefused(403, ACCOUNT_REFUSED) from exc


def _session_middleware(settings: Settings) -> Middleware:
    assert settings.secret_key is not None  # Settings refuses oidc_issuer without one
    secure = settings.base_url.startswith("https://")
    return Middleware(
        SessionMiddleware,
        secret_key=settings.secret_key.get_secret_value(),
        session_cookie="__Secure-rowscope_oidc" if secure else "rowscope_oidc",
        max_age=COOKIE_MAX_AGE,
        path=PATH,
        same_site="lax",  # the callback is a top-level GET navigation from the provider
        https_only=secure,
    )


def _client(settings: Settings) -> Any:
    """authlib's client for the provider; discovery and JWKS are fetched on first use and cached."""
    secret = settings.oidc_client_secret.get_secret_value() if settings.oidc_client_secret else None
    client_kwargs: dict[str, Any] = {
        "scope": settings.oidc_scopes,
        "code_challenge_method": "S256",
        "timeout": 10,
    }
    if secret is None:
        client_kwargs["token_endpoint_auth_method"] = "none"
    oauth = OAuth()
    return oauth.register(
        name="upstream",
        client_id=settings.oidc_client_id,
        client_secret=secret,
        server_metadata_url=settings.oidc_discovery_url,
        client_kwargs=client_kwargs,
    )


def routes(auth: AuthContext) -> list[Route]:
    settings = auth.settings
    issuer, client_id = settings.oidc_issuer, settings.oidc_client_id
    assert issuer is not None and client_id is not None
    client = _client(settings)
    name = settings.oidc_name

    def refused(status: int, message: str) -> Response:
        return pages.error_page(TITLE, message, status)

    async def discover() -> None:
        try:
            metadata = await client.load_server_metadata()
        except (httpx2.HTTPError, ValueError) as exc:
            log.warning("OIDC discovery at %s failed: %r", settings.oidc_discovery_url, exc)
            raise SigninRefused(502, f"rowscope cannot reach {name} right now; try again later.") from exc
        if metadata.get("issuer") != issuer:
            # OIDC Discovery §4.3: the document must name exactly the issuer we were configured with.
            log.error("OIDC discovery names issuer %r, configured %r", metadata.get("issuer"), issuer)
            client.server_metadata.clear()
            raise SigninRefused(502, f"Signing in with {name} is misconfigured; tell an administrator.")

    async def start(request: Request) -> Response:
        try:
            await discover()
        except SigninRefused as exc:
            return refused(exc.status, exc.message)
        request.session[RETURN_TO] = safe_return_to(request.query_params.get("return_to"))
        response: Response = await client.authorize_redirect(request, settings.base_url + CALLBACK)
        return response

    async def callback(request: Request) -> Response:
        return_to = safe_return_to(request.session.get(RETURN_TO))
        try:
            await discover()
            token = await client.authorize_access_token(
                request,
                claims_options={
                    "iss": {"essential": True, "value": issuer},
                    "aud": {"essential": True, "values": [client_id]},
                    "sub": {"essential": True},
                },
            )
            claims = token.get("userinfo")
            if not claims:
                raise SigninRefused(401, f"{name} did not send an ID token.")
            upstream = UpstreamUser.from_claims(issuer, dict(claims))
            async with auth.database.service_transaction() as conn:
                user = await map_user(conn, upstream, name)
                changed = await admit(auth, conn, user)
                session = await store.create_session(conn, user, auth.session_ttl)
            if changed:
                auth.forget(user)
        except MismatchingStateError:
            return _clear(
                request, refused(400, "This sign-in has expired or began in another browser; start again.")
            )
        except OAuthError as exc:
            # The provider's own refusal (RFC 6749 §4.1.2.1) or its token endpoint's (§5.2).
            log.info("OIDC sign-in refused upstream: %s %s", exc.error, exc.description)
            return _clear(request, refused(403, f"{name} did not sign you in ({exc.error})."))
        except JoseError as exc:
            log.warning("OIDC ID token rejected: %r", exc)
            return _clear(request, refused(401, f"The answer from {name} could not be verified."))
        except (httpx2.HTTPError, ValueError) as exc:
            log.warning("OIDC token exchange failed: %r", exc)
            return _clear(request, refused(502, f"rowscope cannot reach {name} right now; try again later."))
        except SigninRefused as exc:
            return _clear(request, refused(exc.status, exc.message))
        response = RedirectResponse(return_to, status_code=303)
        sessions.set_cookie(
            response,
            settings,
            sessions.session_cookie(settings),
            session,
            int(auth.session_ttl.total_seconds()),
        )
        return _clear(request, response)

    middleware = [_session_middleware(settings)]
    return [
        Route(PATH, start, methods=["GET"], middleware=middleware),
        Route(CALLBACK, callback, methods=["GET"], middleware=middleware),
    ]


def _clear(request: Request, response: Response) -> Response:
    """Every callback ends the upstream attempt: the state is single use (OIDC Core §3.1.2.7)."""
    request.session.clear()
    return response
