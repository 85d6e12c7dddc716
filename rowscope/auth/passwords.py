"""Local account passwords: argon2id (argon2-cffi's defaults, RFC 9106's second recommended
profile), kept in ``user_credentials`` where no tool can reach them.

A verification is ~0.1-0.2 s of CPU and 64 MiB of memory by design, so it never runs on the event
loop (it would stall every other request of the process for that long): :func:`verify` runs it in a
worker thread (argon2-cffi releases the GIL), at most :data:`CONCURRENCY` at a time per process
through the runtime's limiter. The stored hash is read before, in a transaction of its own, so no
database connection is held while the hash is computed.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass

import anyio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from rowscope.auth.store import end_user_sessions
from rowscope.db.accounts import normalise_email
from rowscope.db.models import UserCredential, UserProfile

MIN_LENGTH = 8
# Verifications running at once in one process. One already fills 4 lanes in threads of its own
# (argon2-cffi's parallelism) and takes 64 MiB, so on up to four cores a second one adds no
# throughput, only threads competing with the event loop: on two cores, 8 sign-ins at once took
# as long with one or two, and other requests' p90 was 0.6-2.7 ms with one, up to 16 ms with two
# (tests/test_signin_concurrency.py). One at ~0.15 s is several sign-ins a second per process, far
# above what people type (`--workers N` verifies N at once); a burst waits its turn, and the
# throttle (auth/throttle.py) bounds how many can queue for one account or address. The thread
# pool's default would let 40 run at once: 2.5 GiB.
CONCURRENCY = 1
_HASHER = PasswordHasher()


@functools.cache
def _dummy() -> str:
    """Verified against when the email is unknown, so a miss costs as much time as a wrong
    password; made on first use (in a worker thread), not at import."""
    return _HASHER.hash("rowscope-timing-equaliser")


class PasswordError(ValueError):
    pass


@dataclass(frozen=True)
class Credential:
    user_id: uuid.UUID
    password_hash: str


async def set_password(conn: AsyncConnection, user_id: uuid.UUID, password: str) -> int:
    """Set the user's password, and end every sign-in session they have: whoever signed in with the
    old password is signed out. Returns the number of sessions ended."""
    if len(password) < MIN_LENGTH:
        raise PasswordError(f"passwords have at least {MIN_LENGTH} characters")
    hashed = _HASHER.hash(password)
    statement = insert(UserCredential).values(user_id=user_id, password_hash=hashed)
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[UserCredential.user_id], set_={"password_hash": statement.excluded.password_hash}
        )
    )
    return await end_user_sessions(conn, user_id)


async def find_credential(conn: AsyncConnection, email: str) -> Credential | None:
    """The stored password of the user with this email, if there is one."""
    try:
        email = normalise_email(email)
    except ValueError:
        return None
    row = (
        await conn.execute(
            select(UserProfile.id, UserCredential.password_hash)
            .join(UserCredential, UserCredential.user_id == UserProfile.id)
            .where(UserProfile.email == email)
        )
    ).first()
    return None if row is None else Credential(row.id, row.password_hash)


def _matches(credential: Credential | None, password: str) -> bool:
    try:
        _HASHER.verify(credential.password_hash if credential else _dummy(), password)
    except (VerificationError, InvalidHashError):
        return False
    return credential is not None


async def verify(
    credential: Credential | None, password: str, limiter: anyio.CapacityLimiter
) -> uuid.UUID | None:
    """The user id when the password is the credential's, else None, in about the same time either
    way (an unknown user is verified against a dummy hash). Runs in a worker thread under
    ``limiter``, the runtime's (:data:`CONCURRENCY` tokens)."""
    matched = await anyio.to_thread.run_sync(_matches, credential, password, limiter=limiter)
    return credential.user_id if matched and credential is not None else None
