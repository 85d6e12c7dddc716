"""Notify revocations only for the changes that can revoke: not for bookkeeping updates.

Migration 0004 sends ``NOTIFY rowscope_revocations`` after any UPDATE of ``oauth_tokens``,
``oauth_clients`` or ``api_keys``, and every process then empties its whole cache of verified
tokens. Most of those updates cannot revoke anything: every refresh-token rotation sets
``oauth_tokens.rotated_at`` (the rotated row's access token stays valid until it expires), every
``/token`` call sets ``oauth_clients.last_used_at``, and a client metadata document refreshed from
its URL rewrites the client's descriptive columns. So each refresh by any connector cost the
next call of every user, in every process, a database look-up (~1 ms against ~1 µs cached,
``bench/oauth.py``).

The UPDATE triggers now name the columns a verification reads (``store.access_token_owner``,
``accounts.use_key``): a statement that sets none of them sends nothing. PostgreSQL fires an
``UPDATE OF`` trigger when a listed column is a target of the UPDATE, changed or not, so nothing
that could revoke is missed. DELETE and TRUNCATE notify as before.

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The columns each verification reads, per table: a change to any of them may revoke.
VERIFIED = {
    "oauth_tokens": (
        "access_hash",
        "revoked_at",
        "access_expires_at",
        "user_id",
        "client_id",
        "scope",
        "resource",
    ),
    "oauth_clients": ("client_id", "revoked_at"),
    "api_keys": ("key_hash", "revoked_at", "user_id"),
}


def _trigger(table: str, update: str) -> None:
    op.execute(f"DROP TRIGGER rowscope_{table}_revocation ON {table}")
    op.execute(
        f"CREATE TRIGGER rowscope_{table}_revocation AFTER {update} OR DELETE OR TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION rowscope_notify_revocation()"
    )


def upgrade() -> None:
    for table, columns in VERIFIED.items():
        _trigger(table, f"UPDATE OF {', '.join(columns)}")


def downgrade() -> None:
    for table in VERIFIED:
        _trigger(table, "UPDATE")
