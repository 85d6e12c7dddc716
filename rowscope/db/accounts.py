"""Users and API keys: rowscope's own bookkeeping, run as the service role (never by tools).

A user is a row of the application's users table (``user_profiles``); rowscope keeps its own
account data beside it, in the tables of :data:`ACCOUNT_TABLES`. Removing a user's account
(:func:`remove_account`) deletes that data and nothing else: the profile row and every application
row (sparks, portfolio items, chats, teams) stay as they are. To delete the person altogether the
application deletes its profile row, and rowscope's rows follow by ``ON DELETE CASCADE``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from rowscope.db.models import (
    ApiKey,
    AuthSession,
    Base,
    OAuthCode,
    OAuthConsent,
    OAuthToken,
    UserCredential,
    UserIdentity,
    UserProfile,
)

KEY_PREFIX = "rsk_"


class AccountError(ValueError):
    """A user or key operation that cannot be done; the message is for the operator."""


@dataclass(frozen=True)
class KeyInfo:
    id: uuid.UUID
    user_email: str
    name: str
    prefix: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None


def normalise_email(email: str) -> str:
    email = email.strip().lower()
    local, _, domain = email.partition("@")
    if not local or "." not in domain or " " in email:
        raise AccountError(f"{email!r} is not an email address")
    return email


def hash_key(key: str) -> str:
    # API keys are 256 random bits, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


async def add_user(conn: AsyncConnection, email: str, display_name: str | None = None) -> uuid.UUID:
    """Create the user, or return the existing one's id."""
    email = normalise_email(email)
    statement = (
        insert(UserProfile)
        .values(email=email, display_name=display_name)
        .on_conflict_do_nothing(index_elements=["email"])
    )
    await conn.execute(statement)
    return await user_id(conn, email)


async def find_user(conn: AsyncConnection, email: str) -> uuid.UUID | None:
    return (
        await conn.execute(select(UserProfile.id).where(UserProfile.email == normalise_email(email)))
    ).scalar()


async def user_id(conn: AsyncConnection, email: str) -> uuid.UUID:
    found = await find_user(conn, email)
    if found is None:
        raise AccountError(f"no user {email}; create one with `rowscope users add {email}`")
    return found


# rowscope's own tables holding a user's account data, by what `users remove` reports them as: all
# of it, and only it (tests/test_cli.py checks that every other table referring to a user is the
# application's).
ACCOUNT_TABLES: dict[str, type[Base]] = {
    "password": UserCredential,
    "sign-in links": UserIdentity,
    "sign-in sessions": AuthSession,
    "authorization codes": OAuthCode,
    "OAuth tokens": OAuthToken,
    "consents": OAuthConsent,
    "API keys": ApiKey,
}


@dataclass(frozen=True)
class UserInfo:
    id: uuid.UUID
    email: str
    password: bool
    identities: int  # links to an upstream OpenID Connect subject
    keys: int  # live API keys
    connections: int  # approved clients (consents)
    sessions: int  # live sign-in sessions


async def list_users(conn: AsyncConnection) -> list[UserInfo]:
    def count(model: Any, *where: Any) -> Any:
        return select(func.count()).where(model.user_id == UserProfile.id, *where).scalar_subquery()

    statement = select(
        UserProfile.id,
        UserProfile.email,
        select(UserCredential.user_id).where(UserCredential.user_id == UserProfile.id).exists(),
        count(UserIdentity),
        count(ApiKey, ApiKey.revoked_at.is_(None)),
        count(OAuthConsent),
        count(AuthSession, AuthSession.expires_at > func.now()),
    ).order_by(UserProfile.email)
    return [UserInfo(*row) for row in await conn.execute(statement)]


async def remove_account(conn: AsyncConnection, user: uuid.UUID) -> dict[str, int]:
    """Delete rowscope's account data of the user (every row of :data:`ACCOUNT_TABLES`), never the
    user's profile or the application's rows; how many rows of each kind went. Deleting tokens and
    keys notifies every process's token cache (migration 0004), so they stop working at once."""
    removed = {}
    for kind, model in ACCOUNT_TABLES.items():
        result = await conn.execute(delete(model).where(model.__table__.c.user_id == user))
        removed[kind] = result.rowcount
    return removed


async def create_key(conn: AsyncConnection, email: str, name: str) -> tuple[uuid.UUID, str]:
    """A new API key for the user: returns its id and the key, which is shown once and never stored."""
    owner = await user_id(conn, email)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = (
        await conn.execute(
            insert(ApiKey)
            .values(user_id=owner, name=name, prefix=key[:12], key_hash=hash_key(key))
            .returning(ApiKey.id)
        )
    ).scalar_one()
    return key_id, key


async def list_keys(conn: AsyncConnection, email: str | None = None) -> list[KeyInfo]:
    # Columns, not the ApiKey entity: on a Core connection an entity expands to all of its columns.
    statement = (
        select(
            ApiKey.id,
            UserProfile.email,
            ApiKey.name,
            ApiKey.prefix,
            ApiKey.created_at,
            ApiKey.last_used_at,
            ApiKey.revoked_at,
        )
        .join(UserProfile, UserProfile.id == ApiKey.user_id)
        .order_by(ApiKey.created_at)
    )
    if email is not None:
        statement = statement.where(UserProfile.email == normalise_email(email))
    rows = (await conn.execute(statement)).all()
    return [
        KeyInfo(key_id, mail, name, prefix, created, used, revoked)
        for key_id, mail, name, prefix, created, used, revoked in rows
    ]


async def revoke_key(conn: AsyncConnection, key_id: uuid.UUID) -> None:
    result = await conn.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=dt.datetime.now(dt.UTC))
        .returning(ApiKey.id)
    )
    if result.first() is None:
        raise AccountError(f"no live API key {key_id}")


KEY_USE_RESOLUTION = dt.timedelta(minutes=1)  # how finely last_used_at follows a key's use


async def use_key(conn: AsyncConnection, key: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """(key id, user id) of a live key, or None; its use is recorded in ``last_used_at`` so that
    ``keys list`` tells live keys from forgotten ones, at most once per ``KEY_USE_RESOLUTION``: the
    look-up itself says whether the record is stale, so a key in steady use costs one statement, and
    a write once a minute. (That column is not one a verification reads, so the write empties no
    token cache: migration 0010.)"""
    if not key.startswith(KEY_PREFIX) or len(key) > 100:
        return None
    stale = or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < func.now() - KEY_USE_RESOLUTION)
    row = (
        await conn.execute(
            select(ApiKey.id, ApiKey.user_id, stale.label("stale")).where(
                ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)
            )
        )
    ).first()
    if row is None:
        return None
    if row.stale:
        await conn.execute(update(ApiKey).where(ApiKey.id == row.id, stale).values(last_used_at=func.now()))
    return row.id, row.user_id
