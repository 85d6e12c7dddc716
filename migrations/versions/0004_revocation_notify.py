"""Tell every rowscope process when a credential may have been revoked.

Any change to ``oauth_tokens``, ``oauth_clients`` or ``api_keys`` other than an insert (a
revocation, a rotation, a cascade from a deleted user) sends ``NOTIFY rowscope_revocations`` when
its transaction commits. Each server process listens and empties its cache of verified tokens, so
caching verifications never lets a revoked credential through for longer than the notification
takes.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("oauth_tokens", "oauth_clients", "api_keys")


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION rowscope_notify_revocation() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
          PERFORM pg_notify('rowscope_revocations', TG_TABLE_NAME);
          RETURN NULL;
        END $$
        """
    )
    for table in TABLES:
        op.execute(
            f"CREATE TRIGGER rowscope_{table}_revocation AFTER UPDATE OR DELETE OR TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION rowscope_notify_revocation()"
        )


def downgrade() -> None:
    for table in TABLES:
        op.execute(f"DROP TRIGGER rowscope_{table}_revocation ON {table}")
    op.execute("DROP FUNCTION rowscope_notify_revocation()")
