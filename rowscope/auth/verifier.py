"""The resource server's token verifier: turns a bearer credential into the user it acts for.

It implements the MCP SDK's ``TokenVerifier`` protocol, so the SDK's bearer middleware does the
HTTP side (401 with ``WWW-Authenticate``, the audience check against ``resource_server_url``). For
now the only credentials are rowscope API keys (hashed in ``api_keys``); OAuth access tokens slot
in as another branch of :meth:`RowscopeVerifier.verify_token`.
"""

from __future__ import annotations

import logging

from mcp.server.auth.provider import AccessToken
from sqlalchemy.exc import SQLAlchemyError

from rowscope.db.accounts import KEY_PREFIX, key_owner
from rowscope.db.engine import Database

log = logging.getLogger(__name__)

READ_SCOPE = "rowscope:read"
WRITE_SCOPE = "rowscope:write"


class RowscopeVerifier:
    def __init__(self, database: Database, resource_url: str) -> None:
        self.database = database
        self.resource_url = resource_url

    async def verify_token(self, token: str) -> AccessToken | None:
        if token.startswith(KEY_PREFIX):
            return await self._api_key(token)
        return None

    async def _api_key(self, token: str) -> AccessToken | None:
        try:
            async with self.database.service_transaction() as conn:
                found = await key_owner(conn, token)
        except (SQLAlchemyError, OSError):
            log.warning("could not verify an API key: database unavailable", exc_info=True)
            return None
        if found is None:
            return None
        key_id, user_id = found
        # An API key is the user's own credential: it carries both scopes and names this server
        # as its audience, like an OAuth token issued for it would.
        return AccessToken(
            token=token,
            client_id=f"api-key:{key_id}",
            scopes=[READ_SCOPE, WRITE_SCOPE],
            expires_at=None,
            resource=self.resource_url,
            subject=str(user_id),
        )
