"""Browser sessions for rowscope's own pages, and their CSRF tokens.

A sign-in creates a server-side session (``auth_sessions``, stored hashed); the browser holds the
random id in an HttpOnly, SameSite=Lax cookie (``__Host-`` prefixed and Secure over https). A
session ends when it expires, when its browser signs out (``POST /signout``), and for every browser
of the user when their password is set, their tokens are revoked or their account is removed by
the operator (``rowscope users passwd | tokens revoke --user | users remove``). The
CSRF token of a form is an HMAC of the session id and the form's purpose, so it needs no server
key and no storage, and is worthless without the cookie. The sign-in form, which has no session
yet, uses a double-submit cookie instead.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from starlette.requests import Request
from starlette.responses import Response

from rowscope.server.settings import Settings


def _secure(settings: Settings) -> bool:
    return settings.base_url.startswith("https://")


def session_cookie(settings: Settings) -> str:
    return "__Host-rowscope_session" if _secure(settings) else "rowscope_session"


def signin_cookie(settings: Settings) -> str:
    return "__Host-rowscope_signin" if _secure(settings) else "rowscope_signin"


def set_cookie(response: Response, settings: Settings, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/", secure=_secure(settings), httponly=True, samesite="lax"
    )


def delete_cookie(response: Response, settings: Settings, name: str) -> None:
    """Expire a cookie set by :func:`set_cookie` (a ``__Host-`` cookie is only replaced by one with
    the same attributes: Secure, path /)."""
    response.delete_cookie(name, path="/", secure=_secure(settings), httponly=True, samesite="lax")


def csrf_token(secret: str, purpose: str) -> str:
    return hmac.new(secret.encode(), f"rowscope-csrf:{purpose}".encode(), hashlib.sha256).hexdigest()


def csrf_ok(secret: str | None, purpose: str, presented: object) -> bool:
    if not secret or not isinstance(presented, str):
        return False
    return secrets.compare_digest(csrf_token(secret, purpose), presented)


def session_id(request: Request, settings: Settings) -> str | None:
    return request.cookies.get(session_cookie(settings))


def signin_secret(request: Request, settings: Settings) -> str | None:
    return request.cookies.get(signin_cookie(settings))


def new_signin_secret() -> str:
    return secrets.token_urlsafe(32)
