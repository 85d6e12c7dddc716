"""RFC 7009 token revocation. The client authenticates as at the token endpoint; revoking a
refresh token revokes its family, an access token only itself; unknown tokens and tokens of other
clients answer 200 all the same (§2.2), so the endpoint tells an attacker nothing. The
``token_type_hint`` is not needed: both kinds are found by their hash in one look-up."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rowscope.auth import store
from rowscope.auth.clients import authenticate_client
from rowscope.auth.context import AuthContext
from rowscope.auth.errors import NO_STORE, InvalidRequest, OAuthError, error_response
from rowscope.auth.token import post_route, read_form


def routes(auth: AuthContext) -> list[Route]:
    async def revoke(request: Request) -> Response:
        try:
            form = await read_form(request)
            token = form.get("token")
            if not token:
                raise InvalidRequest("token is required")
            async with auth.database.service_transaction() as conn:
                client = await authenticate_client(conn, request, form, auth.fetcher)
                await store.revoke_token(conn, token, client.client_id)
        except OAuthError as error:
            return error_response(error)
        return Response(status_code=200, headers=NO_STORE)

    return [post_route("/revoke", revoke)]
