"""Users and API keys: rowscope's own bookkeeping, run as the service role (never by tools).

A user is an account, a row of ``user_profiles`` (Spark's users table, and rowscope's own account
table for every application); rowscope keeps its own account data beside it, in the tables of
:data:`ACCOUNT_TABLES`. Removing a user's account (:func:`remove_account`) deletes that data and
nothing else: the profile row and every application row (sparks, portfolio items, chats, teams)
stay as they are. To delete the person altogether the application deletes its profile row, and
rowscope's rows follow by ``ON DELETE CASCADE``.

Each account acts as a *subject*, the application's own id for the user (``db/subjects.py``):

* The policy's ``[users]`` table is another table (seed 004's ``profiles``, 003's ``"User"``,
  ``auth.users``): that table decides. ``users add``, ``stdio --user`` and every sign-in look the
  account's email up in it (its email column, compared in lower case) and record its id, as text,
  in ``user_profiles.subject`` (:func:`refresh_subject`). An email the table does not have is
  refused (:class:`NotAnApplicationUser`): nobody is served as a subject the application does not
  know, and nobody signs in who is not one of its users.
* It is ``user_profiles`` (Spark; applications without a users table): an account is its own
  subject, unless ``users add --subject`` recorded one (seed 001's Discord ids).

Two accounts never hold one subject (a unique column, and a check here that names the other
account, counting an account without a subject as holding its own id).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Text, and_, cast, column, delete, false, func, or_, select, table, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import quoted_name
from sqlalchemy.sql.expression import TableClause

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
from rowscope.db.policy import UsersSpec, table_key

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


async def add_user(
    conn: AsyncConnection,
    email: str,
    display_name: str | None = None,
    *,
    users: UsersSpec | None = None,
    subject: str | None = None,
) -> uuid.UUID:
    """Create the user, or return the existing one's id, and record its subject (module docstring):
    with an application users table (``users``), the id that table has for the email, checked
    before anything is written; else ``subject`` when given (an existing account's is replaced,
    never cleared)."""
    email = normalise_email(email)
    if users is not None and not users.own:
        if subject is not None:
            raise AccountError(
                f"--subject is for applications without a users table: this policy's users are "
                f"{users.table}, whose {users.id_column} is each user's subject"
            )
        subject = await app_subject(conn, users, email)
    elif subject is not None:
        subject = checked_subject(subject)
    statement = (
        insert(UserProfile)
        .values(email=email, display_name=display_name)
        .on_conflict_do_nothing(index_elements=["email"])
    )
    await conn.execute(statement)
    account = await user_id(conn, email)
    if subject is not None:
        await set_subject(conn, account, subject)
    return account


class NotAnApplicationUser(AccountError):
    """An email the application's users table does not have (or has more than once)."""


def app_users_table(users: UsersSpec) -> TableClause:
    """The application's users table as SQL names it: every part quoted, as the policy spells it
    (``auth.users``, ``"User"``), whatever the case."""
    schema, _, name = table_key(users.table).rpartition(".")
    return table(
        quoted_name(name, quote=True),
        column(quoted_name(users.id_column, quote=True)),
        column(quoted_name(users.email_column, quote=True)),
        schema=quoted_name(schema, quote=True) if schema else None,
    )


async def app_subject(conn: AsyncConnection, users: UsersSpec, email: str) -> str:
    """The id (as text) that the application's users table has for ``email``, compared in lower
    case; run as the owner role, which the table's row-level security does not bind."""
    t = app_users_table(users)
    subject = cast(t.c[users.id_column], Text)
    found = (
        (
            await conn.execute(
                select(subject)
                .distinct()
                .where(func.lower(t.c[users.email_column]) == func.lower(email))
                .limit(2)
            )
        )
        .scalars()
        .all()
    )
    if not found:
        raise NotAnApplicationUser(
            f"{users.table} has no user with the {users.email_column} {email}: add them to the "
            "application first"
        )
    if len(found) > 1:
        raise NotAnApplicationUser(
            f"{users.table} has more than one user with the {users.email_column} {email} (ignoring "
            "case), so it does not say which one they are"
        )
    return str(found[0])


SUBJECT_LIMIT = 320


def checked_subject(subject: str) -> str:
    subject = subject.strip()
    if not subject or len(subject) > SUBJECT_LIMIT:
        raise AccountError(f"a subject is 1 to {SUBJECT_LIMIT} characters, the application's id for the user")
    return subject


async def set_subject(conn: AsyncConnection, account: uuid.UUID, subject: str) -> bool:
    """Record ``subject`` on the account; whether it changed. Refused when another account holds
    it (its own, or its id when it has none)."""
    try:
        same_id = UserProfile.id == uuid.UUID(subject)
    except ValueError:
        same_id = false()
    holder = (
        await conn.execute(
            select(UserProfile.email).where(
                UserProfile.id != account,
                or_(UserProfile.subject == subject, and_(UserProfile.subject.is_(None), same_id)),
            )
        )
    ).scalar()
    if holder is not None:
        raise AccountError(
            f"the subject {subject} is {holder}'s already: two accounts would act as one user of the "
            "application"
        )
    changed = await conn.execute(
        update(UserProfile)
        .where(UserProfile.id == account, UserProfile.subject.is_distinct_from(subject))
        .values(subject=subject)
    )
    return bool(changed.rowcount)


async def subject_of(conn: AsyncConnection, account: uuid.UUID) -> str | None:
    """The subject recorded on the account; None: it is its own subject."""
    found: str | None = (
        await conn.execute(select(UserProfile.subject).where(UserProfile.id == account))
    ).scalar()
    return found


async def refresh_subject(conn: AsyncConnection, users: UsersSpec, account: uuid.UUID) -> bool:
    """With an application users table, look the account's email up in it and record the id as
    the account's subject (``stdio --user`` and every sign-in); whether the subject changed (the
    caller then forgets any cached one). Nothing to do for rowscope's own users."""
    if users.own:
        return False
    email = (await conn.execute(select(UserProfile.email).where(UserProfile.id == account))).scalar_one()
    return await set_subject(conn, account, await app_subject(conn, users, email))


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
    subject: str | None  # the application's id for the account; None: its own id
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
        UserProfile.subject,
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
