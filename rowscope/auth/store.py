"""The authorization server's storage: clients, codes, tokens, consents and sign-in sessions.

Every secret handed out (code, access token, refresh token, session id, client secret) is 256
random bits with a recognisable prefix, and only its SHA-256 is stored. The two races that matter
are settled by the database in one statement each:

* a code is consumed with ``UPDATE … SET used_at = now() WHERE used_at IS NULL AND expires_at >
  now() RETURNING`` — exactly one redemption wins; a replay revokes what the code issued
  (RFC 6749 §4.1.2, OAuth 2.1 §4.1.3);
* a refresh token is rotated with the same pattern on ``rotated_at``; presenting a rotated token
  again revokes its whole family (OAuth 2.1 §4.3.1, RFC 9700 §4.14.2).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Interval,
    String,
    and_,
    bindparam,
    delete,
    func,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from rowscope.db.models import (
    AuthSession,
    OAuthClient,
    OAuthCode,
    OAuthConsent,
    OAuthToken,
    UserProfile,
)

CODE_PREFIX, ACCESS_PREFIX, REFRESH_PREFIX, SESSION_PREFIX, SECRET_PREFIX = (
    "rsc_",
    "rsa_",
    "rsr_",
    "rss_",
    "rscs_",
)


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Client:
    client_id: str
    client_name: str
    redirect_uris: tuple[str, ...]
    grant_types: tuple[str, ...]
    token_endpoint_auth_method: str
    scope: str | None
    kind: str
    secret_hash: str | None
    metadata: dict[str, Any]

    @property
    def is_public(self) -> bool:
        return self.token_endpoint_auth_method == "none"

    def check_secret(self, secret: str) -> bool:
        return self.secret_hash is not None and secrets.compare_digest(self.secret_hash, digest(secret))


def _client(row: Any) -> Client:
    return Client(
        client_id=row.client_id,
        client_name=row.client_name,
        redirect_uris=tuple(row.redirect_uris),
        grant_types=tuple(row.grant_types),
        token_endpoint_auth_method=row.token_endpoint_auth_method,
        scope=row.scope,
        kind=row.kind,
        secret_hash=row.secret_hash,
        metadata=dict(row.client_metadata),
    )


# -- clients --------------------------------------------------------------------------------------


async def get_client(conn: AsyncConnection, client_id: str) -> Client | None:
    row = (
        await conn.execute(
            select(*OAuthClient.__table__.c).where(
                OAuthClient.client_id == client_id, OAuthClient.revoked_at.is_(None)
            )
        )
    ).first()
    return None if row is None else _client(row)


async def save_client(conn: AsyncConnection, values: dict[str, Any]) -> None:
    """Insert a client, or refresh a cached metadata-document client with the same id."""
    statement = insert(OAuthClient).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=[OAuthClient.client_id],
        set_={k: statement.excluded[k] for k in values if k != "client_id"} | {"updated_at": func.now()},
        where=OAuthClient.kind == "document",
    )
    await conn.execute(statement)


async def touch_client(conn: AsyncConnection, client_id: str) -> None:
    await conn.execute(
        update(OAuthClient).where(OAuthClient.client_id == client_id).values(last_used_at=func.now())
    )


async def list_clients(conn: AsyncConnection) -> list[dict[str, Any]]:
    statement = select(
        OAuthClient.client_id,
        OAuthClient.client_name,
        OAuthClient.kind,
        OAuthClient.created_at,
        OAuthClient.last_used_at,
        OAuthClient.revoked_at,
    ).order_by(OAuthClient.created_at)
    return [dict(r) for r in (await conn.execute(statement)).mappings()]


async def revoke_client(conn: AsyncConnection, client_id: str) -> bool:
    done = await conn.execute(
        update(OAuthClient)
        .where(OAuthClient.client_id == client_id, OAuthClient.revoked_at.is_(None))
        .values(revoked_at=func.now())
        .returning(OAuthClient.id)
    )
    if done.first() is None:
        return False
    await conn.execute(
        update(OAuthToken)
        .where(OAuthToken.client_id == client_id, OAuthToken.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    return True


def unused_clients() -> ColumnElement[bool]:
    """Registered clients, not revoked, that never got a token (``touch_client`` sets
    ``last_used_at`` on every grant)."""
    return (
        (OAuthClient.kind == "registered")
        & OAuthClient.last_used_at.is_(None)
        & OAuthClient.revoked_at.is_(None)
    )


def stale_clients(unused_for: dt.timedelta) -> ColumnElement[bool]:
    """Registered clients that never got a token, or none for ``unused_for``, and hold no live token
    (Claude registers a new client on every fresh connection)."""
    live_token = select(OAuthToken.id).where(
        OAuthToken.client_id == OAuthClient.client_id,
        OAuthToken.revoked_at.is_(None),
        OAuthToken.refresh_expires_at > func.now(),
    )
    return (
        (OAuthClient.kind == "registered")
        & (func.coalesce(OAuthClient.last_used_at, OAuthClient.created_at) < now() - unused_for)
        & ~live_token.exists()
    )


async def delete_stale_clients(conn: AsyncConnection, unused_for: dt.timedelta) -> int:
    """Delete the :func:`stale_clients`; how many there were."""
    result = await conn.execute(
        delete(OAuthClient).where(stale_clients(unused_for)).returning(OAuthClient.id)
    )
    return len(result.all())


# A transaction-level advisory lock (two keys, as throttle.py's) held while the quota of unused
# clients is counted and a client inserted, so concurrent registrations cannot overshoot it.
UNUSED_QUOTA_LOCK = (0x5A0C_0004, 0)


async def unused_quota_wait(conn: AsyncConnection, quota: int, ttl: dt.timedelta) -> float | None:
    """Seconds until fewer than ``quota`` :func:`unused_clients` younger than ``ttl`` exist, or None
    when fewer exist now. Takes the quota's lock until the transaction ends."""
    await conn.execute(select(func.pg_advisory_xact_lock(*UNUSED_QUOTA_LOCK)))
    found = (
        await conn.execute(
            select(func.extract("epoch", OAuthClient.created_at + ttl - func.now()))
            .where(unused_clients(), OAuthClient.created_at > func.now() - ttl)
            .order_by(OAuthClient.created_at.desc())
            .offset(quota - 1)
            .limit(1)
        )
    ).scalar_one_or_none()
    return None if found is None else float(found)


# -- codes ----------------------------------------------------------------------------------------


async def issue_code(
    conn: AsyncConnection,
    *,
    client_id: str,
    user_id: uuid.UUID,
    redirect_uri: str,
    scope: str,
    resource: str,
    code_challenge: str,
    ttl: dt.timedelta,
) -> str:
    code = new_secret(CODE_PREFIX)
    await conn.execute(
        insert(OAuthCode).values(
            code_hash=digest(code),
            client_id=client_id,
            user_id=user_id,
            redirect_uri=redirect_uri,
            scope=scope,
            resource=resource,
            code_challenge=code_challenge,
            expires_at=now() + ttl,
        )
    )
    return code


async def consume_code(conn: AsyncConnection, code: str) -> tuple[str, Any]:
    """``("ok", row)`` for the one redemption that wins; ``("replayed", None)`` after revoking what
    an earlier redemption issued; ``("invalid", None)`` for unknown or expired codes."""
    row = (
        await conn.execute(
            update(OAuthCode)
            .where(
                OAuthCode.code_hash == digest(code),
                OAuthCode.used_at.is_(None),
                OAuthCode.expires_at > func.now(),
            )
            .values(used_at=func.now())
            .returning(*OAuthCode.__table__.c)
        )
    ).first()
    if row is not None:
        return "ok", row
    used = (
        await conn.execute(
            select(OAuthCode.id).where(OAuthCode.code_hash == digest(code), OAuthCode.used_at.is_not(None))
        )
    ).scalar()
    if used is None:
        return "invalid", None
    families = select(OAuthToken.family_id).where(OAuthToken.code_id == used).scalar_subquery()
    await conn.execute(
        update(OAuthToken)
        .where(OAuthToken.family_id.in_(families), OAuthToken.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    return "replayed", None


# -- tokens ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedTokens:
    access_token: str
    refresh_token: str
    expires_in: int
    scope: str


async def issue_tokens(
    conn: AsyncConnection,
    *,
    client_id: str,
    user_id: uuid.UUID,
    scope: str,
    resource: str,
    access_ttl: dt.timedelta,
    refresh_ttl: dt.timedelta,
    family_id: uuid.UUID | None = None,
    code_id: uuid.UUID | None = None,
) -> IssuedTokens:
    access, refresh = new_secret(ACCESS_PREFIX), new_secret(REFRESH_PREFIX)
    await conn.execute(
        insert(OAuthToken).values(
            family_id=family_id or uuid.uuid4(),
            code_id=code_id,
            client_id=client_id,
            user_id=user_id,
            scope=scope,
            resource=resource,
            access_hash=digest(access),
            access_expires_at=now() + access_ttl,
            refresh_hash=digest(refresh),
            refresh_expires_at=now() + refresh_ttl,
        )
    )
    return IssuedTokens(access, refresh, int(access_ttl.total_seconds()), scope)


async def rotate_refresh_token(conn: AsyncConnection, refresh_token: str, client_id: str) -> tuple[str, Any]:
    """Claim a refresh token for rotation: ``("ok", row)``; ``("reused", None)`` after revoking
    the family of a token presented again; ``("invalid", None)`` otherwise."""
    hashed = digest(refresh_token)
    row = (
        await conn.execute(
            update(OAuthToken)
            .where(
                OAuthToken.refresh_hash == hashed,
                OAuthToken.client_id == client_id,
                OAuthToken.rotated_at.is_(None),
                OAuthToken.revoked_at.is_(None),
                OAuthToken.refresh_expires_at > func.now(),
            )
            .values(rotated_at=func.now())
            .returning(*OAuthToken.__table__.c)
        )
    ).first()
    if row is not None:
        return "ok", row
    family = (
        await conn.execute(
            select(OAuthToken.family_id).where(
                OAuthToken.refresh_hash == hashed, OAuthToken.rotated_at.is_not(None)
            )
        )
    ).scalar()
    if family is None:
        return "invalid", None
    await revoke_family(conn, family)
    return "reused", None


async def release_refresh_token(conn: AsyncConnection, token_id: uuid.UUID) -> None:
    """Undo this transaction's claim on a refresh token whose refresh was refused. The row stays
    locked by the claim until commit, so no concurrent rotation can slip in between."""
    await conn.execute(update(OAuthToken).where(OAuthToken.id == token_id).values(rotated_at=None))


async def revoke_family(conn: AsyncConnection, family_id: uuid.UUID) -> None:
    await conn.execute(
        update(OAuthToken)
        .where(OAuthToken.family_id == family_id, OAuthToken.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )


async def revoke_token(conn: AsyncConnection, token: str, client_id: str) -> None:
    """RFC 7009: revoke an access token (its row) or a refresh token (its whole family). Tokens of
    other clients and unknown tokens are ignored, as §2.2 asks."""
    hashed = digest(token)
    row = (
        await conn.execute(
            select(OAuthToken.family_id, OAuthToken.refresh_hash == hashed).where(
                or_(OAuthToken.access_hash == hashed, OAuthToken.refresh_hash == hashed),
                OAuthToken.client_id == client_id,
            )
        )
    ).first()
    if row is None:
        return
    family_id, is_refresh = row
    if is_refresh:
        await revoke_family(conn, family_id)
    else:
        await conn.execute(
            update(OAuthToken)
            .where(OAuthToken.access_hash == hashed, OAuthToken.revoked_at.is_(None))
            .values(revoked_at=func.now())
        )


# How finely ``oauth_tokens.last_used_at`` follows a token's use: the connections page says when
# each connection was last used, and a verification writes that at most this often per token.
TOKEN_USE_RESOLUTION = dt.timedelta(minutes=5)


@functools.cache
def _owner_statements() -> tuple[Any, Any]:
    """The verification's look-up and its last-use write, built once (on first use): building the
    expression anew for every verification cost more than the statement's own round trip does
    under load."""
    hashed = bindparam("hashed", type_=String)
    used = func.coalesce(OAuthToken.last_used_at, OAuthToken.created_at)
    resolution = literal_column(f"interval '{TOKEN_USE_RESOLUTION.total_seconds():.0f} seconds'", Interval)
    stale = used < func.now() - resolution
    look_up = (
        select(
            OAuthToken.user_id,
            OAuthToken.client_id,
            OAuthToken.scope,
            OAuthToken.resource,
            OAuthToken.access_expires_at,
            stale.label("stale"),
        )
        .join(OAuthClient, OAuthClient.client_id == OAuthToken.client_id)
        .where(
            OAuthToken.access_hash == hashed,
            OAuthToken.revoked_at.is_(None),
            OAuthToken.access_expires_at > func.now(),
            OAuthClient.revoked_at.is_(None),
        )
    )
    # `stale` again in the WHERE: of two processes that both saw it stale, one writes.
    record = update(OAuthToken).where(OAuthToken.access_hash == hashed, stale).values(last_used_at=func.now())
    return look_up, record


async def access_token_owner(conn: AsyncConnection, token: str) -> Any | None:
    """The live token row of an access token, or None (expired, revoked, or its client revoked).

    Its use is recorded in ``last_used_at`` (for the connections page), at most once per
    :data:`TOKEN_USE_RESOLUTION`: the look-up itself says whether the record is stale, so a token in
    steady use costs this one statement, and an UPDATE once every five minutes (a fresh token counts
    as used when it was issued). That column is not one a verification reads, so the write empties
    no token cache (migration 0010), and with the cache a process verifies in the database at most
    once a minute per token anyway."""
    look_up, record = _owner_statements()
    params = {"hashed": digest(token)}
    row = (await conn.execute(look_up, params)).first()
    if row is not None and row.stale:
        await conn.execute(record, params)
    return row


async def revoke_user_tokens(conn: AsyncConnection, user_id: uuid.UUID, client_id: str | None = None) -> int:
    """Revoke the user's live tokens (of one client, or of all) and delete their unredeemed codes,
    so that nothing already handed out can still become a token. Redeemed codes stay: a replay
    must still be recognised. Codes first: a redemption racing this either finds its code gone, or
    commits first and its new token is then among those revoked."""
    codes = [OAuthCode.user_id == user_id, OAuthCode.used_at.is_(None)]
    tokens = [OAuthToken.user_id == user_id, OAuthToken.revoked_at.is_(None)]
    if client_id is not None:
        codes.append(OAuthCode.client_id == client_id)
        tokens.append(OAuthToken.client_id == client_id)
    await conn.execute(delete(OAuthCode).where(and_(*codes)))
    result = await conn.execute(
        update(OAuthToken).where(and_(*tokens)).values(revoked_at=func.now()).returning(OAuthToken.id)
    )
    return len(result.all())


# -- consents -------------------------------------------------------------------------------------


async def consented_scopes(conn: AsyncConnection, user_id: uuid.UUID, client_id: str) -> set[str]:
    scope = (
        await conn.execute(
            select(OAuthConsent.scope).where(
                OAuthConsent.user_id == user_id, OAuthConsent.client_id == client_id
            )
        )
    ).scalar()
    return set((scope or "").split())


async def remember_consent(
    conn: AsyncConnection, user_id: uuid.UUID, client_id: str, scopes: set[str]
) -> None:
    granted = await consented_scopes(conn, user_id, client_id) | scopes
    statement = insert(OAuthConsent).values(
        user_id=user_id, client_id=client_id, scope=" ".join(sorted(granted))
    )
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[OAuthConsent.user_id, OAuthConsent.client_id],
            set_={"scope": statement.excluded.scope, "updated_at": func.now()},
        )
    )


@dataclass(frozen=True)
class Connection:
    """An assistant the user approved: since when, for what, and when it last used its access."""

    client_id: str
    client_name: str
    scopes: list[str]
    connected_at: dt.datetime
    # The latest issue, refresh or recorded use of a token of this connection (to within
    # TOKEN_USE_RESOLUTION); None before the first token.
    last_used_at: dt.datetime | None


async def user_connections(conn: AsyncConnection, user_id: uuid.UUID) -> list[Connection]:
    """The user's connections, the most recently active first (used, or connected if never used).
    Only tokens issued since the consent count towards a connection's last use: one withdrawn and
    approved again starts afresh."""
    last_used = (
        select(func.max(func.coalesce(OAuthToken.last_used_at, OAuthToken.created_at)))
        .where(
            OAuthToken.user_id == OAuthConsent.user_id,
            OAuthToken.client_id == OAuthConsent.client_id,
            OAuthToken.created_at >= OAuthConsent.created_at,
        )
        .scalar_subquery()
        .label("last_used_at")
    )
    statement = (
        select(
            OAuthConsent.client_id,
            OAuthClient.client_name,
            OAuthConsent.scope,
            OAuthConsent.created_at,
            last_used,
        )
        .join(OAuthClient, OAuthClient.client_id == OAuthConsent.client_id)
        .where(OAuthConsent.user_id == user_id)
    )
    found = [
        Connection(r.client_id, r.client_name, r.scope.split(), r.created_at, r.last_used_at)
        for r in await conn.execute(statement)
    ]
    return sorted(found, key=lambda c: c.last_used_at or c.connected_at, reverse=True)


async def forget_connection(conn: AsyncConnection, user_id: uuid.UUID, client_id: str) -> None:
    """Withdraw a consent and revoke every token the client holds for the user."""
    await conn.execute(
        delete(OAuthConsent).where(OAuthConsent.user_id == user_id, OAuthConsent.client_id == client_id)
    )
    await revoke_user_tokens(conn, user_id, client_id)


async def forget_consents(conn: AsyncConnection, user_id: uuid.UUID) -> int:
    """Withdraw every consent of the user: each assistant has to be approved again."""
    result = await conn.execute(delete(OAuthConsent).where(OAuthConsent.user_id == user_id))
    return result.rowcount


# -- sign-in sessions -----------------------------------------------------------------------------


async def create_session(conn: AsyncConnection, user_id: uuid.UUID, ttl: dt.timedelta) -> str:
    token = new_secret(SESSION_PREFIX)
    await conn.execute(
        insert(AuthSession).values(token_hash=digest(token), user_id=user_id, expires_at=now() + ttl)
    )
    return token


async def session_user(conn: AsyncConnection, token: str) -> tuple[uuid.UUID, str] | None:
    """(user id, email) of a live sign-in session."""
    row = (
        await conn.execute(
            select(AuthSession.user_id, UserProfile.email)
            .join(UserProfile, UserProfile.id == AuthSession.user_id)
            .where(AuthSession.token_hash == digest(token), AuthSession.expires_at > func.now())
        )
    ).first()
    return None if row is None else (row.user_id, row.email)


async def end_session(conn: AsyncConnection, token: str) -> None:
    await conn.execute(delete(AuthSession).where(AuthSession.token_hash == digest(token)))


async def end_user_sessions(conn: AsyncConnection, user_id: uuid.UUID) -> int:
    """Sign the user out of every browser: the number of live sessions ended."""
    result = await conn.execute(
        delete(AuthSession)
        .where(AuthSession.user_id == user_id)
        .returning(AuthSession.expires_at > func.now())
    )
    return sum(1 for (live,) in result if live)
