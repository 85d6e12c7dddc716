"""OAuth errors: one class per error code, each carrying its status, rendered through one path.

Endpoints raise these; :func:`error_response` renders them as the JSON of RFC 6749 §5.2 with
``Cache-Control: no-store``. Authorization-endpoint errors that go back to the client are
redirects, built in ``authorize.py`` from the same objects.
"""

from __future__ import annotations

from typing import ClassVar

from starlette.responses import JSONResponse

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(Exception):
    error: ClassVar[str] = "server_error"
    status: ClassVar[int] = 400

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}

    def headers(self) -> dict[str, str]:
        """Headers this error adds to its response."""
        return {}


class InvalidRequest(OAuthError):
    error = "invalid_request"


class InvalidClient(OAuthError):
    """RFC 6749 §5.2; answered with 401, which makes Claude register again."""

    error = "invalid_client"
    status = 401


class InvalidGrant(OAuthError):
    error = "invalid_grant"


class UnauthorizedClient(OAuthError):
    error = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"


class UnsupportedResponseType(OAuthError):
    error = "unsupported_response_type"


class InvalidScope(OAuthError):
    error = "invalid_scope"


class AccessDenied(OAuthError):
    error = "access_denied"


class InvalidTarget(OAuthError):
    """RFC 8707 §2: the ``resource`` is not this server's MCP endpoint."""

    error = "invalid_target"


class InvalidRedirectUri(OAuthError):
    """RFC 7591 §3.2.2."""

    error = "invalid_redirect_uri"


class InvalidClientMetadata(OAuthError):
    """RFC 7591 §3.2.2."""

    error = "invalid_client_metadata"


class RequestTooLarge(OAuthError):
    """A body past its endpoint's limit, refused as soon as that is known (nothing more is read);
    the connection is closed after the answer so the rest of the body is not read either."""

    error = "invalid_request"
    status = 413

    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}


class TemporarilyUnavailable(OAuthError):
    """The server is over one of its own limits (503, RFC 9110 §15.6.4); ``Retry-After`` says when
    to try again. The code is RFC 6749 §4.1.2.1's."""

    error = "temporarily_unavailable"
    status = 503

    def __init__(self, description: str, retry_after: int) -> None:
        super().__init__(description)
        self.retry_after = max(1, retry_after)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class TooManyRequests(TemporarilyUnavailable):
    """The caller is over a rate limit (429, RFC 6585 §4), with ``Retry-After``."""

    status = 429


class UnsupportedTokenType(OAuthError):
    """RFC 7009 §2.2.1."""

    error = "unsupported_token_type"


def error_response(error: OAuthError) -> JSONResponse:
    headers = NO_STORE | error.headers()
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="rowscope"'
    return JSONResponse(error.body(), status_code=error.status, headers=headers)
