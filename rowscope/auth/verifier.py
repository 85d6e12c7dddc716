"""The resource server's token verifier: turns a bearer credential into the user it acts for.

Two kinds of credential are accepted: OAuth access tokens issued by rowscope's own authorization
server (live, unrevoked, their client not revoked; the audience is checked by the caller against
this server's resource URL) and rowscope API keys. Both are looked up by their SHA-256, never
compared in plain text. Anything else is refused — there is no token passthrough.
"""

from __future__ import annotations

import logging

from mcp.server.auth.provider import AccessToken
from sqlalchemy.exc import SQLAlchemyError

from rowscope.auth import scopes, store
from rowscope.db.accounts import KEY_PREFIX, key_owner
from rowscope.db.engine import Database

log = logging.getLogger(__name__)


class VerifierUnavailable(Exception):
    """The database could not be asked; the request should be retried, not re-authorised."""


class RowscopeVerifier:
    def __init__(self, database: Database, resource_url: str) -> None:
        self.database = database
        self.resource_url = resource_url

    async def verify_token(self, token: str) -> AccessToken | None:
        if len(token) > 200:
            return None
        try:
            if token.startswith(store.ACCESS_PREFIX):
                return await self._access_token(token)
            if token.startswith(KEY_PREFIX):
                return await self._api_key(token)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("could not verify a bearer token: database unavailable")
            raise VerifierUnavailable from exc
        return None

    async def _access_token(self, token: str) -> AccessToken | None:
        async with self.database.service_transaction() as conn:
            row = await store.access_token_owner(conn, token)
        if row is None:
            return None
        return AccessToken(
            token=token,
            client_id=row.client_id,
            scopes=row.scope.split(),
            expires_at=int(row.access_expires_at.timestamp()),
            resource=row.resource,
            subject=str(row.user_id),
        )

    async def _api_key(self, token: str) -> AccessToken | None:
        async with self.database.service_transaction() as conn:
            found = await key_owner(conn, token)
        if found is None:
            return None
        key_id, user_id = found
        # An API key is the user's own credential: both scopes, and this server as its audience.
        return AccessToken(
            token=token,
            client_id=f"api-key:{key_id}",
            scopes=list(scopes.SUPPORTED),
            expires_at=None,
            resource=self.resource_url,
            subject=str(user_id),
        )
