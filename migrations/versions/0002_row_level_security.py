"""Lock 2: the tool role and row-level security on every user-owned table.

Tool transactions switch to ``rowscope_tool`` (NOLOGIN, NOBYPASSRLS) and set ``rowscope.user_id``
transaction-locally. The policies below are written out by hand rather than generated from the
scoping policy file, on purpose: lock 2 must hold even when the compiler of lock 1 is wrong, so it
shares no code with it. Spark access is resolved by SECURITY DEFINER functions, which avoids the
infinite recursion that policies referencing each other's tables (sparks <-> spark_members) cause.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLE = "rowscope_tool"
READ_TABLES = (
    "user_profiles",
    "teams",
    "team_members",
    "sparks",
    "spark_members",
    "portfolio_items",
    "chat_sessions",
    "chat_messages",
    "spark_embeddings",
)
UID = "rowscope_user_id()"

FUNCTIONS = f"""
CREATE FUNCTION rowscope_user_id() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT nullif(current_setting('rowscope.user_id', true), '')::uuid $$;

CREATE FUNCTION rowscope_team_ids() RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$ SELECT team_id FROM team_members WHERE user_id = {UID} $$;

-- Spark access (seed 000): owner OR member OR shared with a team the user belongs to.
CREATE FUNCTION rowscope_readable_spark_ids() RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
  SELECT id FROM sparks WHERE user_id = {UID}
  UNION
  SELECT spark_id FROM spark_members WHERE user_id = {UID}
  UNION
  SELECT s.id FROM sparks s JOIN team_members t ON t.team_id = s.team_id
  WHERE s.is_shared_with_team AND t.user_id = {UID}
$$;

-- Training a spark: its owner or a member with the editor role.
CREATE FUNCTION rowscope_writable_spark_ids() RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
  SELECT id FROM sparks WHERE user_id = {UID}
  UNION
  SELECT spark_id FROM spark_members WHERE user_id = {UID} AND role = 'editor'
$$;
"""

POLICIES = {
    "user_profiles": [("SELECT", f"id = {UID}", None)],
    "teams": [("SELECT", "id IN (SELECT rowscope_team_ids())", None)],
    "team_members": [("SELECT", f"user_id = {UID}", None)],
    "sparks": [("SELECT", "id IN (SELECT rowscope_readable_spark_ids())", None)],
    "spark_members": [("SELECT", f"user_id = {UID}", None)],
    "portfolio_items": [("SELECT", f"user_id = {UID}", None)],
    "chat_sessions": [("SELECT", f"user_id = {UID}", None)],
    "chat_messages": [
        ("SELECT", f"session_id IN (SELECT id FROM chat_sessions WHERE user_id = {UID})", None)
    ],
    "spark_embeddings": [
        ("SELECT", "spark_id IN (SELECT rowscope_readable_spark_ids())", None),
        ("INSERT", None, "spark_id IN (SELECT rowscope_writable_spark_ids())"),
        ("DELETE", "spark_id IN (SELECT rowscope_writable_spark_ids())", None),
    ],
    # No policy and no grant: tools never see API keys.
    "api_keys": [],
}


def upgrade() -> None:
    op.execute(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') "
        f"THEN CREATE ROLE {ROLE} NOLOGIN NOBYPASSRLS; END IF; END $$"
    )
    # The connecting role must be able to SET ROLE to the tool role (a superuser already can).
    op.execute(
        f"DO $$ BEGIN IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) "
        f"THEN EXECUTE format('GRANT {ROLE} TO %I', current_user); END IF; END $$"
    )
    op.execute(f"GRANT USAGE ON SCHEMA public TO {ROLE}")
    op.execute(f"GRANT SELECT ON {', '.join(READ_TABLES)} TO {ROLE}")
    op.execute(f"GRANT INSERT, DELETE ON spark_embeddings TO {ROLE}")
    op.execute(FUNCTIONS)
    for table, policies in POLICIES.items():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        for command, using, check in policies:
            clauses = (f" USING ({using})" if using else "") + (f" WITH CHECK ({check})" if check else "")
            name = f"rowscope_{table}_{command.lower()}"
            op.execute(f"CREATE POLICY {name} ON {table} FOR {command} TO {ROLE}{clauses}")


def downgrade() -> None:
    for table, policies in POLICIES.items():
        for command, _, _ in policies:
            op.execute(f"DROP POLICY rowscope_{table}_{command.lower()} ON {table}")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    for fn in (
        "rowscope_writable_spark_ids",
        "rowscope_readable_spark_ids",
        "rowscope_team_ids",
        "rowscope_user_id",
    ):
        op.execute(f"DROP FUNCTION {fn}()")
    op.execute(f"REVOKE ALL ON {', '.join(READ_TABLES)} FROM {ROLE}")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {ROLE}")
