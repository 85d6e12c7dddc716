"""When each access token was last used, for the connections page ("Last used 5 minutes ago").

Until now the store knew when a connection's tokens were issued and refreshed (each refresh is a
new ``oauth_tokens`` row), not when they were used: an assistant holding an hour-long access token
looked idle for that hour. ``last_used_at`` is written by the verification, at most once every five
minutes per token (``store.access_token_owner``). Migration 0010's triggers do not name the
column, so writing it empties no process's token cache. Nullable, no default: adding it rewrites
nothing, and a token without it counts as used when it was issued.

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("oauth_tokens", sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("oauth_tokens", "last_used_at")
