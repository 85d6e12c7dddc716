"""The resource server's token verifier: turns a bearer credential into the user it acts for.

Two kinds of credential are accepted: OAuth access tokens issued by rowscope's own authorization
server (live, unrevoked, their client not revoked; the audience is checked by the caller against
this server's resource URL) and rowscope API keys. Both are looked up by their SHA-256, never
compared in plain text. Anything else is refused — there is no token passthrough. Answers are
kept in a :class:`TokenCache` that every revocation empties.
"""

from __future__ import annotations

import logging

from mcp.server.auth.provider import AccessToken
from sqlalchemy.exc import SQLAlchemyError

from rowscope.auth import scopes, store
from rowscope.auth.token_cache import TokenCache
from rowscope.db.accounts import KEY_PREFIX, use_key
from rowscope.db.engine import Database

log = logging.getLogger(__name__)


class VerifierUnavailable(Exception):
    """The database could not be asked; the request should be retried, not re-authorised."""


class RowscopeVerifier:
    def __init__(self, database: Database, resource_url: str, cache: TokenCache | None = None) -> None:
        self.database = database
        self.resource_url = resource_url
        self.cache = cache

    async def verify_token(self, token: str) -> AccessToken | None:
        if len(token) > 200:
            return None
        if not token.startswith((store.ACCESS_PREFIX, KEY_PREFIX)):
            return None
        digest = store.digest(token)
        if self.cache is not None and (cached := self.cache.get(digest)) is not None:
            return cached
        generation = self.cache.generation if self.cache is not None else 0
        try:
            if token.startswith(store.ACCESS_PREFIX):
                verified = await self._access_token(token)
            else:
                verified = await self._api_key(token)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("could not verify a bearer token: database unavailable")
            raise VerifierUnavailable from exc
        if verified is not None and self.cache is not None:
            self.cache.put(digest, verified, generation)
        return verified

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
            found = await use_key(conn, token)
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
