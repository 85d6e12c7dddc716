"""Who a tool call runs as, in both of the names it has.

A rowscope account (``user_profiles.id``, a uuid) is what OAuth tokens, sessions and quotas name.
The policy compares the *subject* instead: the application's own id for the user, as text (its
users table's id of whatever type, ``db/policy.py``). For Spark they are one id; for an application
with its own users table, ``rowscope users add`` / sign-in record the subject on the account
(``user_profiles.subject``, migration 0014), and an account without one is its own subject.

Tool transactions set both, transaction-locally: ``rowscope.user_id`` (the account: rowscope's own
row-level security, e.g. ``training_additions``) and ``rowscope.subject`` (what the application's
policies, written by ``rowscope rls plan``, compare).
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import text

if TYPE_CHECKING:
    from rowscope.db.engine import Database


SUBJECT_OF = text("SELECT subject FROM user_profiles WHERE id = :id")


@dataclass(frozen=True, slots=True)
class Caller:
    account: uuid.UUID
    subject: str

    @classmethod
    def own(cls, account: uuid.UUID) -> Caller:
        """An account that is its own subject (Spark's users)."""
        return cls(account, str(account))


class UnknownSubject(LookupError):
    """The account is gone, or has no subject where the application's users table gives them: no
    tool call runs as it (never as a stand-in id)."""


class Subjects:
    """Accounts' subjects, read from ``user_profiles`` and kept for ``ttl`` seconds (a subject
    changes only when ``users add`` or a sign-in changes it; a removed account has no token left).
    ``linked``: the policy names an application users table, so every account served must have a
    subject recorded from it (an account without one is refused, not served as its own id)."""

    SIZE = 10_000

    def __init__(self, database: Database, *, linked: bool = False, ttl: float = 60.0) -> None:
        self._database = database
        self._linked = linked
        self._ttl = ttl
        self._known: OrderedDict[uuid.UUID, tuple[float, Caller]] = OrderedDict()

    async def caller(self, account: uuid.UUID) -> Caller:
        now = time.monotonic()
        found = self._known.get(account)
        if found is not None and found[0] > now:
            self._known.move_to_end(account)
            return found[1]
        async with self._database.service_transaction() as conn:
            row = (await conn.execute(SUBJECT_OF, {"id": account})).first()
        if row is None:
            raise UnknownSubject("this account no longer exists")
        (subject,) = row
        if subject is None and self._linked:
            raise UnknownSubject("this account is not linked to a user of the application")
        caller = Caller(account, str(account) if subject is None else str(subject))
        self._known[account] = (now + self._ttl, caller)
        if len(self._known) > self.SIZE:
            self._known.popitem(last=False)
        return caller

    def forget(self, account: uuid.UUID) -> None:
        self._known.pop(account, None)
