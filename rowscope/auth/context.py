"""What the authorization server's endpoints share, built once by the app factory."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field

import anyio
from sqlalchemy.ext.asyncio import AsyncConnection

from rowscope.auth.cimd import ClientDocumentFetcher
from rowscope.db.accounts import refresh_subject
from rowscope.db.engine import Database
from rowscope.db.policy import UsersSpec, load_policy
from rowscope.db.subjects import Subjects
from rowscope.server.settings import Settings

# What a sign-in page says when AuthContext.admit refuses (the operator's detail stays in the log).
NOT_AN_APPLICATION_USER = "This email address is not one of the application's users: it cannot sign in here."
ACCOUNT_REFUSED = "This account cannot sign in right now; ask an administrator."


@dataclass
class AuthContext:
    settings: Settings
    database: Database
    fetcher: ClientDocumentFetcher
    # The runtime's limiter of password verifications (auth/passwords.py).
    hashing: anyio.CapacityLimiter
    # The runtime's cache of accounts' subjects, told when a sign-in changes one (None: no cache).
    subjects: Subjects | None = None
    # Host header value -> the MCP endpoint's resource identifier on that host (Settings.host_resources).
    host_resources: dict[str, str] = field(init=False)
    # The policy's [users]: an application's own users table decides who may sign in.
    users: UsersSpec = field(init=False)

    def __post_init__(self) -> None:
        self.host_resources = self.settings.host_resources
        self.users = load_policy(self.settings.policy).users

    async def admit(self, conn: AsyncConnection, account: uuid.UUID) -> bool:
        """At sign-in: with an application users table, record the account's subject from it by
        email, or refuse (``AccountError``; ``NotAnApplicationUser`` for an email it lacks) so the
        sign-in ends without a session. Whether the subject changed: then :meth:`forget` it once
        the transaction has committed."""
        return await refresh_subject(conn, self.users, account)

    def forget(self, account: uuid.UUID) -> None:
        if self.subjects is not None:
            self.subjects.forget(account)

    @property
    def issuer(self) -> str:
        """RFC 8414 §2: the issuer, byte-identical in metadata and in every ``iss`` parameter."""
        return self.settings.base_url

    @property
    def resource(self) -> str:
        """The public resource identifier (RFC 8707), as reached on the public URL."""
        return self.settings.resource_url

    def resource_on(self, host: str | None) -> str:
        """The resource identifier of the MCP endpoint reached on ``host`` (a Host header value):
        RFC 9728 §3.3 has a client refuse metadata whose ``resource`` differs from the URL it used,
        so a client on http://localhost:8000/mcp is told that one. Hosts the server does not accept
        get the public one."""
        return self.host_resources.get((host or "").lower(), self.resource)

    def is_resource(self, resource: str) -> bool:
        """Whether ``resource`` identifies this server's MCP endpoint on any accepted host."""
        return resource in self.host_resources.values()

    @property
    def code_ttl(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.settings.code_ttl)

    @property
    def access_ttl(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.settings.access_token_ttl)

    @property
    def refresh_ttl(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.settings.refresh_token_ttl)

    @property
    def session_ttl(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.settings.session_ttl)
