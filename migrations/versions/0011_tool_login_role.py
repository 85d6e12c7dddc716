"""The tool role logs in: tool transactions connect as ``rowscope_tool`` itself.

Until now every tool transaction ran on a connection of the owning role (a superuser in the
embedded set-up) and switched to ``rowscope_tool`` with ``set_config('role', …, true)``. Lock 2
then rested on that switch: where it failed or was misrouted (a transaction pooler executing
another client's prepared statement, issue 13), the read ran with the owner's rights and
row-level security did not apply at all. Now the tool pools log in as ``rowscope_tool``
(NOSUPERUSER, NOBYPASSRLS, no CREATEROLE), so without the switch a tool connection still sees
nothing: its policies name ``rowscope_user_id()``, which is NULL until the transaction sets it.

No password is set here: the embedded PostgreSQL trusts its private unix socket, and an external
server's administrator gives the role a password through ``rowscope migrate`` with
``ROWSCOPE_TOOL_DATABASE_URL`` (the password goes as a SCRAM verifier, never in plain text), or by
hand. ``rowscope serve`` proves the role's attributes at every start (``db/guard.py``).

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLE = "rowscope_tool"


def upgrade() -> None:
    op.execute(f"ALTER ROLE {ROLE} WITH LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB")
    # Connecting needs CONNECT on the database, which PUBLIC has by default but hardened
    # installations revoke.
    op.execute(
        f"DO $$ BEGIN EXECUTE format('GRANT CONNECT ON DATABASE %I TO {ROLE}', current_database()); END $$"
    )


def downgrade() -> None:
    op.execute(f"ALTER ROLE {ROLE} WITH NOLOGIN")
