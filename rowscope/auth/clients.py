"""Clients: finding them (registered, or by Client ID Metadata Document), the redirect-URI policy,
and client authentication at the token and revocation endpoints.

* Redirect URIs are https, or http on a loopback host for native clients (OAuth 2.1 §2.3.1,
  RFC 8252 §7.3), never with a fragment or user info (RFC 6749 §3.1.2); an authorization request's
  ``redirect_uri`` must equal a registered one exactly, as a string (OAuth 2.1 §2.3.1) — no case
  or slash leniency. The one exception is the port of a loopback http URI, which RFC 8252 §7.3
  says must be any port at the time of the request (the native app listens wherever it could):
  ``http://127.0.0.1:51004/cb`` matches a registered ``http://127.0.0.1/cb`` or
  ``http://127.0.0.1:1234/cb``, and the same for ``localhost`` and ``[::1]``; the rest of the
  string, host included, must still be identical.
* The other URIs a client registers (``client_uri``, ``logo_uri``, ``tos_uri``, ``policy_uri``)
  follow the same scheme rule: https, or http on a loopback host — never ``javascript:``,
  ``data:`` or anything else a page could be made to link or load.
* A ``client_id`` that is an https URL is fetched as a metadata document (``cimd.py``) and cached
  in ``oauth_clients`` with ``kind = 'document'``.
* Client authentication (RFC 6749 §2.3.1): ``none`` for public clients, or ``client_secret_basic``
  / ``client_secret_post``; a client must use the method it registered. Failures are
  ``invalid_client`` with status 401, which makes Claude register again.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import unquote, urlsplit

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request

from rowscope.auth import store
from rowscope.auth.cimd import (
    ClientDocumentError,
    ClientDocumentFetcher,
    FetchesExhausted,
    is_client_document_url,
)
from rowscope.auth.errors import InvalidClient, InvalidRequest, TemporarilyUnavailable

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "[::1]", "::1", "localhost"})
AUTH_METHODS = ("none", "client_secret_basic", "client_secret_post")


def redirect_uri_problem(uri: object, what: str = "redirect URIs") -> str | None:
    """Why ``uri`` may not be registered as one of ``what`` (redirect URIs, or another URI of the
    client's metadata), or None."""
    if not isinstance(uri, str) or len(uri) > 2000:
        return f"{what} are strings of at most 2000 characters"
    if any(c <= " " or c == "\x7f" for c in uri):  # urlsplit would strip some of them unseen
        return f"{what} may not contain spaces or control characters"
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return f"{uri!r} is not a valid URL"
    del port
    if parts.fragment or "#" in uri:
        return f"{what} may not contain a fragment"
    if parts.username is not None or parts.password is not None:
        return f"{what} may not contain user information"
    if not parts.hostname:
        return f"{uri!r} is not an absolute URL"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        return None
    return f"{what} must be https, or http on a loopback address (127.0.0.1, [::1], localhost)"


def _loopback_without_port(uri: str) -> tuple[str, str] | None:
    """(host, everything after the authority) of a loopback http URI, or None for any other URI."""
    if not uri.startswith("http://"):
        return None
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return None
    if parts.hostname not in LOOPBACK_HOSTS or "@" in parts.netloc:
        return None
    netloc = parts.netloc
    host = netloc[: netloc.rindex(":")] if netloc.rfind(":") > netloc.rfind("]") else netloc
    return host, uri[len("http://") + len(netloc) :]


def redirect_uri_matches(requested: str, registered: tuple[str, ...]) -> bool:
    """Whether an authorization request's ``redirect_uri`` is one the client registered: the same
    string, or for loopback http the same string but for the port (RFC 8252 §7.3)."""
    if requested in registered:
        return True
    loopback = _loopback_without_port(requested)
    return loopback is not None and any(_loopback_without_port(uri) == loopback for uri in registered)


async def find_client(
    conn: AsyncConnection, client_id: str, fetcher: ClientDocumentFetcher
) -> store.Client | None:
    """A registered client, or a metadata-document client fetched (or refreshed) now. A fetch this
    process may not start now (over its limits) is ``TemporarilyUnavailable``, not an unknown client."""
    if not client_id or len(client_id) > 2048:
        return None
    if not is_client_document_url(client_id):
        return await store.get_client(conn, client_id)
    try:
        document = await fetcher.get(client_id)
    except FetchesExhausted as exc:
        raise TemporarilyUnavailable(exc.description, exc.retry_after) from None
    except ClientDocumentError:
        return None
    known = await store.get_client(conn, client_id)
    if known is not None and known.kind != "document":
        return None
    if (
        known is None
        or known.redirect_uris != document.redirect_uris
        or known.client_name != document.client_name
    ):
        await store.save_client(
            conn,
            {
                "client_id": client_id,
                "client_name": document.client_name,
                "redirect_uris": list(document.redirect_uris),
                "grant_types": list(document.grant_types),
                "token_endpoint_auth_method": "none",
                "scope": document.scope,
                "kind": "document",
                "client_metadata": {"client_uri": document.client_uri, "logo_uri": document.logo_uri},
            },
        )
    return await store.get_client(conn, client_id)


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidClient("malformed Basic credentials") from exc
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise InvalidClient("malformed Basic credentials")
    # RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
    return unquote(client_id.replace("+", " ")), unquote(secret.replace("+", " "))


async def authenticate_client(
    conn: AsyncConnection, request: Request, form: dict[str, str], fetcher: ClientDocumentFetcher
) -> store.Client:
    """The client making a token or revocation request, authenticated as it registered."""
    basic = _basic_credentials(request)
    form_id, form_secret = form.get("client_id"), form.get("client_secret")
    if basic is not None:
        if form_secret is not None:
            raise InvalidRequest("use one client authentication method per request")
        if form_id is not None and form_id != basic[0]:
            raise InvalidClient("client_id does not match the Basic credentials")
        client_id, secret, method = basic[0], basic[1], "client_secret_basic"
    elif form_secret is not None:
        client_id, secret, method = form_id or "", form_secret, "client_secret_post"
    else:
        client_id, secret, method = form_id or "", None, "none"
    if not client_id:
        raise InvalidClient("client authentication is required")
    client = await find_client(conn, client_id, fetcher)
    if client is None:
        raise InvalidClient("unknown client")
    if client.token_endpoint_auth_method != method:
        raise InvalidClient(f"this client authenticates with {client.token_endpoint_auth_method}")
    if method != "none" and (secret is None or not client.check_secret(secret)):
        raise InvalidClient("client authentication failed")
    return client
