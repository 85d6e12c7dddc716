"""Local account passwords: argon2id (argon2-cffi's defaults, RFC 9106's second recommended
profile), kept in ``user_credentials`` where no tool can reach them."""

from __future__ import annotations

import uuid

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from rowscope.db.accounts import normalise_email
from rowscope.db.models import UserCredential, UserProfile

MIN_LENGTH = 8
_HASHER = PasswordHasher()
# Verified against when the email is unknown, so a miss costs as much time as a wrong password.
_DUMMY = _HASHER.hash("rowscope-timing-equaliser")


class PasswordError(ValueError):
    pass


async def set_password(conn: AsyncConnection, user_id: uuid.UUID, password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise PasswordError(f"passwords have at least {MIN_LENGTH} characters")
    hashed = _HASHER.hash(password)
    statement = insert(UserCredential).values(user_id=user_id, password_hash=hashed)
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[UserCredential.user_id], set_={"password_hash": statement.excluded.password_hash}
        )
    )


async def check_password(conn: AsyncConnection, email: str, password: str) -> uuid.UUID | None:
    """The user id when the email and password match, else None (in about the same time)."""
    try:
        email = normalise_email(email)
    except ValueError:
        email = ""
    row = (
        await conn.execute(
            select(UserProfile.id, UserCredential.password_hash)
            .join(UserCredential, UserCredential.user_id == UserProfile.id)
            .where(UserProfile.email == email)
        )
    ).first()
    try:
        _HASHER.verify(row.password_hash if row else _DUMMY, password)
    except (VerificationError, InvalidHashError):
        return None
    return row.id if row else None
