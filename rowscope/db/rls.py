"""Lock 2 for any policy: ``rowscope rls plan`` writes it, ``rowscope rls check`` proves it.

**plan** is a second translation of the policy file into SQL, independent of lock 1's compiler
(``db/policy.py``'s :class:`CompiledPolicy`): it reads the validated :class:`PolicyFile` (data only)
and the live catalog (``pg_catalog``, through psycopg), and writes a reviewable migration. Sharing
no code with lock 1 is the point: a bug in one translation is caught by the other (``check``).

For every table the policy names (models, access, member and role tables, the users table, the
knowledge table) the migration grants ``SELECT`` to ``rowscope_tool``, enables row-level security
and creates one ``SELECT`` policy for the tool role whose ``USING`` is the OR of what the table is:

* a model's ``scope``; an access table's ``read`` rule;
* a member table: the subject's own rows (``m.user = subject``), which lock 1's ``EXISTS`` reads;
* a role table, the users table: the subject's own row (``key = subject``);
* the knowledge table: chunks whose parent is readable; ``INSERT WITH CHECK`` and ``DELETE USING``
  the parent is writable (and every ``on_insert = { user = true }`` column is the subject). No
  ``UPDATE``: rowscope inserts with ``ON CONFLICT DO NOTHING`` only.
* when the knowledge spec leaves a bookkeeping column to rowscope's side table
  (``knowledge_chunks``), policies on it restricted to ``store = '<the knowledge table>'``.

Each rule becomes SQL over the row (``t`` below), the subject read from ``rowscope_subject()``
and cast to the compared column's type (none for string columns):

``owner`` ``t.col = rowscope_subject()::type``; ``flag`` ``t.col IS TRUE``; ``unset``
``t.col IS NULL``; ``public`` ``true``; ``any``/``all`` OR/AND; ``access`` its read rule, on this
row; ``member`` ``t.on IN (SELECT member_fn())``; ``parent`` ``t.column IN (SELECT parent_fn())``;
``role`` ``role_fn()``. The functions are ``SECURITY DEFINER`` (``SET search_path = pg_catalog,
pg_temp``, every name qualified and quoted), so a policy never reads another row-level-secured
table itself: policies that reference each other's tables recurse forever otherwise (migration
0002 does the same for Spark). They are executable by the tool role only.

**check** proves on the live database, before serving and on demand, that (a) every policy table
has RLS enabled (``guard.require_lock_two``, run by the caller), a ``SELECT`` grant and a
permissive ``SELECT`` policy that applies to the tool role, the knowledge table ``INSERT`` and
``DELETE`` ones too; and (b) for up to :data:`SUBJECTS` subjects sampled from the ``[users]`` table
(its first ids in id order), lock 1 and lock 2 give the same rows of every table a model, an access
rule or the knowledge store reads: lock 1 is the compiled policy's predicates run as the owning role
(to which the tables' RLS does not apply), lock 2 a ``SELECT`` with no predicate in a tool
transaction switched to the subject. Each side is read up to :data:`LIMIT` keys in key order; a
larger set is compared on its first :data:`LIMIT` keys only (the summary says how many were).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from sqlalchemy import String, Text, bindparam, cast, false, func, literal_column, or_, select, text
from sqlalchemy import column as sa_column
from sqlalchemy import table as sa_table
from sqlalchemy.exc import DBAPIError

from rowscope.db.engine import Database
from rowscope.db.guard import TOOL_ROLE, LockRefused, first_line, quoted
from rowscope.db.policy import (
    USER_PARAM,
    AccessRule,
    AllRule,
    AnyRule,
    CompiledPolicy,
    FlagRule,
    MemberRule,
    MemberSpec,
    OwnerRule,
    ParentRule,
    PolicyError,
    PolicyFile,
    PublicRule,
    RoleRule,
    RoleSpec,
    Rule,
    UnsetRule,
    UserValue,
    as_subject,
)
from rowscope.db.subjects import Caller

SIDE_TABLE = "knowledge_chunks"  # migration 0014: bookkeeping the knowledge table lacks
SUBJECTS = 5  # subjects the check samples from the [users] table
LIMIT = 10_000  # keys read per table, subject and lock


# -- plan -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    type: str  # format_type(), qualified outside pg_catalog
    string: bool  # a string type (text, varchar, ...): compared with the subject without a cast


@dataclass(frozen=True)
class TableInfo:
    schema: str
    name: str
    columns: dict[str, Column]
    sequence: str | None = None  # the id column's sequence (knowledge table only), qualified

    @property
    def sql(self) -> str:
        return f"{_ident(self.schema)}.{_ident(self.name)}"


@dataclass(frozen=True)
class Catalog:
    """What the planner reads of the live database: each policy table's schema and column types,
    and the schema of rowscope's own functions (``rowscope_subject()``) and side table."""

    tables: dict[str, TableInfo]  # by the name the policy writes
    rowscope_schema: str


async def read_catalog(conn: psycopg.AsyncConnection[Any], policy: PolicyFile) -> Catalog:
    """The catalog facts the plan needs; :class:`PolicyError` for a table or column that is absent."""
    names = sorted(policy.table_names())
    found = await conn.execute(
        "SELECT n.nspname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE p.proname = 'rowscope_subject' ORDER BY n.nspname LIMIT 1"
    )
    row = await found.fetchone()
    if row is None:
        raise PolicyError("the database has no rowscope_subject() function: run `rowscope migrate` first")
    rowscope_schema = str(row[0])
    oids: dict[str, int] = {}
    for name in names:
        cursor = await conn.execute("SELECT to_regclass(%s)::oid", [quoted(name)])
        oid = (await cursor.fetchone() or [None])[0]
        if oid is None:
            raise PolicyError(f"the policy names table {name}, which the database does not have")
        oids[name] = int(oid)
    # From here on every type outside pg_catalog is named with its schema, as the functions'
    # search_path (pg_catalog, pg_temp) needs.
    await conn.execute("SET LOCAL search_path = pg_catalog")
    tables: dict[str, TableInfo] = {}
    for name, oid in oids.items():
        cursor = await conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = %s",
            [oid],
        )
        schema, relname = await cursor.fetchone() or ("", "")
        cursor = await conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typcategory = 'S' "
            "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            [oid],
        )
        columns = {str(c): Column(str(t), bool(s)) for c, t, s in await cursor.fetchall()}
        sequence = None
        if policy.knowledge is not None and name == policy.knowledge.table:
            cursor = await conn.execute(
                "SELECT pg_get_serial_sequence(%s, %s)",
                [quoted(f"{schema}.{relname}"), policy.knowledge.id_column],
            )
            sequence = (await cursor.fetchone() or [None])[0]
        tables[name] = TableInfo(str(schema), str(relname), columns, sequence)
    return Catalog(tables, rowscope_schema)


def _literal(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _name(*parts: str, salt: Any = None) -> str:
    """A deterministic identifier of at most 63 bytes (PostgreSQL truncates longer ones)."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", "_".join(parts))
    digest = hashlib.sha256(json.dumps(salt, sort_keys=True).encode()).hexdigest()[:8] if salt else ""
    if digest:
        base = f"{base[:54]}_{digest}"
    elif len(base) > 63:
        base = f"{base[:54]}_{hashlib.sha256(base.encode()).hexdigest()[:8]}"
    return base


@dataclass
class _Planner:
    policy: PolicyFile
    catalog: Catalog
    # name -> (returns, body), in the order they were written: a function after those it calls.
    functions: dict[str, tuple[str, str]] = field(default_factory=dict)

    def table(self, name: str) -> TableInfo:
        return self.catalog.tables[name]

    def column(self, table: str, column: str) -> Column:
        info = self.table(table)
        if column not in info.columns:
            raise PolicyError(f"table {table} has no column {column}; its columns: {', '.join(info.columns)}")
        return info.columns[column]

    def fn(self, name: str) -> str:
        return f"{_ident(self.catalog.rowscope_schema)}.{_ident(name)}"

    def subject(self, table: str, column: str) -> str:
        """``rowscope_subject()`` as a value of ``table.column``'s type."""
        found = self.column(table, column)
        subject = f"{self.fn('rowscope_subject')}()"
        return subject if found.string else f"{subject}::{found.type}"

    def is_subject(self, table: str, column: str, alias: str = "") -> str:
        return f"{alias}{_ident(column)} = {self.subject(table, column)}"

    def define(self, name: str, returns: str, body: str) -> str:
        if self.functions.setdefault(name, (returns, body)) != (returns, body):
            raise PolicyError(f"two rules of the policy would need a function named {name}: rename one")
        return self.fn(name)

    def rule(self, rule: Rule, table: str, alias: str = "") -> str:
        """``rule`` on a row of ``table`` (named ``alias``, or unqualified in a policy)."""
        if isinstance(rule, OwnerRule):
            return self.is_subject(table, rule.owner, alias)
        if isinstance(rule, FlagRule):
            self.column(table, rule.flag)
            return f"{alias}{_ident(rule.flag)} IS TRUE"
        if isinstance(rule, UnsetRule):
            self.column(table, rule.unset)
            return f"{alias}{_ident(rule.unset)} IS NULL"
        if isinstance(rule, PublicRule):
            return "true"
        if isinstance(rule, AnyRule):
            return "(" + " OR ".join(self.rule(r, table, alias) for r in rule.any) + ")"
        if isinstance(rule, AllRule):
            return "(" + " AND ".join(self.rule(r, table, alias) for r in rule.all) + ")"
        if isinstance(rule, AccessRule):
            return self.rule(self.policy.access[rule.access].read, table, alias)
        if isinstance(rule, MemberRule):
            self.column(table, rule.member.on)
            return f"{alias}{_ident(rule.member.on)} IN (SELECT {self.member(rule.member)}())"
        if isinstance(rule, RoleRule):
            return f"{self.role(rule.role)}()"
        assert isinstance(rule, ParentRule)
        p = rule.parent
        self.column(table, p.column)
        return f"{alias}{_ident(p.column)} IN (SELECT {self.parent(p.model, p.access, p.references)}())"

    def member(self, m: MemberSpec) -> str:
        """``SELECT m.key FROM member m WHERE m.user = subject [AND m.col IN values]``."""
        conditions = [self.is_subject(m.table, m.user, "m.")]
        for col, values in m.where.items():
            self.column(m.table, col)
            conditions.append(f"m.{_ident(col)} IN ({', '.join(map(_literal, values))})")
        where = " AND ".join(conditions)
        body = f"SELECT m.{_ident(m.key)} FROM {self.table(m.table).sql} m WHERE {where}"  # noqa: S608
        name = _name("rowscope_member", m.table, m.key, salt=m.model_dump())
        return self.define(name, f"SETOF {self.column(m.table, m.key).type}", body)

    def role(self, r: RoleSpec) -> str:
        """``EXISTS (SELECT 1 FROM users u WHERE u.key = subject AND u.column IN values)``."""
        table = r.table or self.policy.users.table
        key = r.key or self.policy.users.id_column
        self.column(table, r.column)
        values = ", ".join(map(_literal, r.values))
        where = f"{self.is_subject(table, key, 'u.')} AND u.{_ident(r.column)} IN ({values})"
        body = f"SELECT EXISTS (SELECT 1 FROM {self.table(table).sql} u WHERE {where})"  # noqa: S608
        name = _name("rowscope_role", table, r.column, salt=[table, key, r.column, r.values])
        return self.define(name, "boolean", body)

    def parent(self, model: str | None, access: str | None, references: str) -> str:
        """``SELECT p.references FROM parent p WHERE <the parent's read rule on p>``."""
        if model is not None:
            spec = self.policy.models[model]
            table, rule = spec.table, spec.scope
            name = _name("rowscope_model", model, references)
        else:
            assert access is not None
            a = self.policy.access[access]
            table, rule = a.table, a.read
            name = _name("rowscope", access, "readable" if references == a.key else f"readable_{references}")
        where = self.rule(rule, table, "p.")
        body = f"SELECT p.{_ident(references)} FROM {self.table(table).sql} p WHERE {where}"  # noqa: S608
        return self.define(name, f"SETOF {self.column(table, references).type}", body)

    def writable(self, access: str) -> str:
        a = self.policy.access[access]
        where = self.rule(a.write, a.table, "p.")
        body = f"SELECT p.{_ident(a.key)} FROM {self.table(a.table).sql} p WHERE {where}"  # noqa: S608
        return self.define(
            _name("rowscope", access, "writable"), f"SETOF {self.column(a.table, a.key).type}", body
        )

    def reads(self, table: str) -> tuple[list[str], list[str]]:
        """What the tool role reads of ``table`` (the OR of it), and what the table is (for the comment)."""
        reads: list[str] = []
        roles: list[str] = []
        for name, spec in self.policy.models.items():
            if spec.table == table:
                reads.append(self.rule(spec.scope, table))
                roles.append(f"model {name}")
        for name, a in self.policy.access.items():
            if a.table == table:
                reads.append(self.rule(a.read, table))
                roles.append(f"access {name}")
        for rule in _rules(self.policy):
            if isinstance(rule, MemberRule) and rule.member.table == table:
                reads.append(self.is_subject(table, rule.member.user))
                roles.append("member table")
            if isinstance(rule, RoleRule) and (rule.role.table or self.policy.users.table) == table:
                reads.append(self.is_subject(table, rule.role.key or self.policy.users.id_column))
                roles.append("role table")
        if self.policy.users.table == table:
            reads.append(self.is_subject(table, self.policy.users.id_column))
            roles.append("users")
        k = self.policy.knowledge
        if k is not None and k.table == table:
            a = self.policy.access[k.access]
            self.column(table, k.parent_column)
            reads.append(f"{_ident(k.parent_column)} IN (SELECT {self.parent(None, k.access, a.key)}())")
            roles.append("knowledge")
        unique = list(dict.fromkeys(reads))
        return (["true"] if "true" in unique else unique), list(dict.fromkeys(roles))


def _rules(policy: PolicyFile) -> list[Rule]:
    """Every rule of the policy, nested ones included, in a fixed order."""
    found: list[Rule] = []
    pending: list[Rule] = [m.scope for m in policy.models.values()]
    pending += [r for a in policy.access.values() for r in (a.read, a.write)]
    while pending:
        rule = pending.pop(0)
        found.append(rule)
        if isinstance(rule, AnyRule):
            pending.extend(rule.any)
        if isinstance(rule, AllRule):
            pending.extend(rule.all)
    return found


def _policy(name: str, table: str, command: str, using: str | None, check: str | None) -> list[str]:
    clauses = ""
    if using is not None:
        clauses += f"\n  USING ({using})"
    if check is not None:
        clauses += f"\n  WITH CHECK ({check})"
    return [
        f"DROP POLICY IF EXISTS {_ident(name)} ON {table};",
        f"CREATE POLICY {_ident(name)} ON {table} FOR {command} TO {TOOL_ROLE}{clauses};",
    ]


# rowscope's own account table. As an application's users table (the default, for applications
# without one of their own: seeds 001, 002) it is rowscope's, not the application's: its lock 2 is
# migration 0002's (a transaction reads its own account, by ``rowscope_user_id()``), and an account's
# subject need not be of its id's type (001's are Discord ids), so the plan and the check leave it
# alone unless a model or a rule reads it.
def own_accounts_only(policy: PolicyFile) -> bool:
    """Whether the policy names rowscope's own account table only as its users table."""
    return policy.users.own and policy.users.table not in policy.rule_tables()


def render(policy: PolicyFile, catalog: Catalog, origin: str) -> str:
    """The migration, as text: the same policy and catalog give the same text."""
    planner = _Planner(policy, catalog)
    blocks: list[list[str]] = []
    for name in sorted(policy.table_names()):
        if name == policy.users.table and own_accounts_only(policy):
            continue
        info = catalog.tables[name]
        reads, roles = planner.reads(name)
        lines = [f"-- {name}: {', '.join(roles)}", f"GRANT SELECT ON {info.sql} TO {TOOL_ROLE};"]
        lines.append(f"ALTER TABLE {info.sql} ENABLE ROW LEVEL SECURITY;")
        lines += _policy(
            _name("rowscope", name, "select"), info.sql, "SELECT", "\n      OR ".join(reads), None
        )
        k = policy.knowledge
        if k is not None and k.table == name:
            writable = f"{_ident(k.parent_column)} IN (SELECT {planner.writable(k.access)}())"
            owned = [
                planner.is_subject(name, c)
                for c, v in sorted(k.on_insert.items())
                if isinstance(v, UserValue)
            ]
            lines.append(f"GRANT INSERT, DELETE ON {info.sql} TO {TOOL_ROLE};")
            if info.sequence is not None:
                lines.append(f"GRANT USAGE ON SEQUENCE {info.sequence} TO {TOOL_ROLE};")
            lines += _policy(
                _name("rowscope", name, "insert"), info.sql, "INSERT", None, " AND ".join([writable, *owned])
            )
            lines += _policy(_name("rowscope", name, "delete"), info.sql, "DELETE", writable, None)
        blocks.append(lines)
    k = policy.knowledge
    if k is not None and None in k.bookkeeping().values():
        side = f"{_ident(catalog.rowscope_schema)}.{_ident(SIDE_TABLE)}"
        store = f'"store" = {_literal(k.table)}'
        key = policy.access[k.access].key
        readable = f'{store} AND "parent_id" IN (SELECT {planner.parent(None, k.access, key)}()::text)'
        writable = f'{store} AND "parent_id" IN (SELECT {planner.writable(k.access)}()::text)'
        lines = [f"-- {SIDE_TABLE}: rowscope's bookkeeping for the chunks of {k.table}"]
        lines.append(f"GRANT SELECT, INSERT, DELETE ON {side} TO {TOOL_ROLE};")
        lines.append(f"ALTER TABLE {side} ENABLE ROW LEVEL SECURITY;")
        lines += _policy(_name("rowscope", k.table, "chunks_select"), side, "SELECT", readable, None)
        lines += _policy(_name("rowscope", k.table, "chunks_insert"), side, "INSERT", None, writable)
        lines += _policy(_name("rowscope", k.table, "chunks_delete"), side, "DELETE", writable, None)
        blocks.append(lines)

    out = [
        f"-- Row-level security for rowscope's tool role ({TOOL_ROLE}): lock 2 for {origin},",
        "-- written by `rowscope rls plan` from the policy and this database's catalog.",
        "-- Review it before applying it, as the owner of these tables (psql -f, or in your migrations),",
        "-- then run `rowscope rls check`. The same policy and schema always give this same text.",
        "-- Enabling row-level security hides these tables' rows from every role that neither owns",
        "-- them nor has BYPASSRLS and has no policy of its own: give such roles (an application",
        f"-- that does not connect as the owner) a policy. {TOOL_ROLE} gets no UPDATE: rowscope only",
        "-- ever inserts with ON CONFLICT DO NOTHING.",
        "BEGIN;",
        "",
    ]
    schemas = sorted({info.schema for info in catalog.tables.values()})
    out += [f"GRANT USAGE ON SCHEMA {_ident(s)} TO {TOOL_ROLE};" for s in schemas]
    out.append("")
    for name, (returns, body) in planner.functions.items():
        if "$fn$" in body:
            raise PolicyError(f"a value of the policy contains $fn$, which the plan cannot quote ({name})")
        fn = planner.fn(name)
        out += [
            f"CREATE OR REPLACE FUNCTION {fn}() RETURNS {returns}",
            "LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp",
            f"AS $fn$ {body} $fn$;",
            f"REVOKE ALL ON FUNCTION {fn}() FROM PUBLIC;",
            f"GRANT EXECUTE ON FUNCTION {fn}() TO {TOOL_ROLE};",
            "",
        ]
    for lines in blocks:
        out += [*lines, ""]
    out.append("COMMIT;")
    return "\n".join(out) + "\n"


async def plan(url: str, policy: PolicyFile, origin: str) -> str:
    """The migration for ``policy`` on the database at ``url`` (a libpq URL of the owning role)."""
    async with await psycopg.AsyncConnection.connect(url, connect_timeout=5) as conn:
        catalog = await read_catalog(conn, policy)
        await conn.rollback()
    return render(policy, catalog, origin)


# -- check ------------------------------------------------------------------------------------------


class RlsMismatch(LockRefused):
    """Lock 2 on the live database does not give what the policy (lock 1) gives; the message names
    the table (and its models) and what differs."""


@dataclass
class Compared:
    """What a passing check compared: per table, the row sets (subjects) and the keys in them."""

    subjects: list[str] = field(default_factory=list)
    tables: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (sets, keys)
    truncated: list[str] = field(default_factory=list)  # tables a set of which exceeded LIMIT

    def summary(self) -> list[str]:
        lines = [
            f"{name}: {sets} row sets, {keys} keys" for name, (sets, keys) in sorted(self.tables.items())
        ]
        if self.truncated:
            lines.append(f"compared only the first {LIMIT} keys of: {', '.join(sorted(set(self.truncated)))}")
        agree = f"{len(self.tables)} table(s) for {len(self.subjects)} sampled subject(s)"
        lines.append(f"lock 1 and lock 2 agree on {agree}")
        return lines


STRUCTURE = text(
    """
    SELECT name, c.oid IS NOT NULL, coalesce(c.relrowsecurity, false),
           coalesce(has_table_privilege(:tool, c.oid, 'SELECT'), false),
           coalesce(has_table_privilege(:tool, c.oid, 'INSERT'), false),
           coalesce(has_table_privilege(:tool, c.oid, 'DELETE'), false),
           (SELECT coalesce(string_agg(DISTINCT p.polcmd::text, ''), '') FROM pg_policy p
             WHERE p.polrelid = c.oid AND p.polpermissive
               AND (0 = ANY (p.polroles) OR EXISTS (
                    SELECT 1 FROM unnest(p.polroles) r WHERE pg_has_role(:tool, r, 'MEMBER')))),
           r.rolsuper OR r.rolbypassrls
             OR (pg_has_role(current_user, c.relowner, 'USAGE') AND NOT c.relforcerowsecurity)
             OR NOT c.relrowsecurity
    FROM unnest(CAST(:names AS text[]), CAST(:quoted AS text[])) AS t(name, quoted)
    LEFT JOIN pg_class c ON c.oid = to_regclass(quoted)
    CROSS JOIN pg_roles r WHERE r.rolname = current_user
    """
)


def _account(subject: str) -> uuid.UUID:
    """The account a sampled subject's tool transaction names: the subject when it is a uuid, else
    the nil uuid (an application's policies read only ``rowscope_subject()``)."""
    try:
        return uuid.UUID(subject)
    except ValueError:
        return uuid.UUID(int=0)


async def _structure(database: Database, policy: PolicyFile) -> None:
    names = sorted(policy.table_names())
    k = policy.knowledge
    writes = {k.table} if k is not None else set()
    if k is not None and None in k.bookkeeping().values():
        names.append(SIDE_TABLE)
        writes.add(SIDE_TABLE)
    async with database.service_transaction() as conn:
        rows = (
            await conn.execute(
                STRUCTURE, {"tool": TOOL_ROLE, "names": names, "quoted": [quoted(n) for n in names]}
            )
        ).all()
    for name, exists, secured, select_, insert, delete, commands, bypasses in rows:
        if not exists:
            raise PolicyError(f"the policy names table {name}, which the database does not have")
        if not secured:  # a policy table's is refused by guard.require_lock_two already
            raise RlsMismatch(
                f"table {name!r} has no row-level security: apply the SQL of `rowscope rls plan`"
            )
        needed = [("SELECT", select_, "r")] + (
            [("INSERT", insert, "a"), ("DELETE", delete, "d")] if name in writes else []
        )
        for command, granted, code in needed:
            if not granted:
                raise RlsMismatch(
                    f"{TOOL_ROLE!r} may not {command} table {name!r}: apply the SQL of `rowscope rls plan` "
                    f"(GRANT {command} ON it TO {TOOL_ROLE})"
                )
            if code not in commands and "*" not in commands:
                raise RlsMismatch(
                    f"table {name!r} has row-level security but no {command} policy for {TOOL_ROLE!r}: "
                    "apply the SQL of `rowscope rls plan`, or write one"
                )
        if not bypasses:
            raise RlsMismatch(
                f"the check reads lock 1's rows of table {name!r} as the database owner role, which its "
                "row-level security binds: set DATABASE_URL to the tables' owner (or a role with BYPASSRLS)"
            )


@dataclass(frozen=True)
class _Target:
    """A table the check compares: how lock 1 reaches it and the key it compares."""

    name: str
    what: str  # "model Note", "knowledge", ...
    table: Any
    key: Any
    reach: Any  # subject -> lock 1's predicate
    rows: Any = None  # which of the table's rows are compared at all (the side table: one store's)


def _is_subject(column: Any, subject: str) -> Any:
    return column == as_subject(bindparam(USER_PARAM, subject, type_=String()), column)


def _targets(compiled: CompiledPolicy) -> list[_Target]:
    policy = compiled.policy
    reach: dict[str, list[tuple[str, Any]]] = {}
    keys: dict[str, Any] = {}

    def add(table: str, what: str, predicate: Any, key: str | None) -> None:
        reach.setdefault(table, []).append((what, predicate))
        if key is not None:
            keys.setdefault(table, compiled.table(table).c[key])

    for name, spec in policy.models.items():
        add(spec.table, f"model {name}", lambda s, n=name: compiled.model_scope(n, s), spec.primary_key)
    for name, a in policy.access.items():
        add(a.table, f"access {name}", lambda s, n=name: compiled.access_predicate(n, "read", s), a.key)
    if policy.knowledge is not None:
        k = policy.knowledge
        column = compiled.table(k.table).c[k.parent_column]
        add(k.table, "knowledge", lambda s: column.in_(compiled.access_ids(k.access, "read", s)), k.id_column)
    users = policy.users
    if not own_accounts_only(policy):
        users_id = compiled.table(users.table).c[users.id_column]
        add(users.table, "users", lambda s: _is_subject(users_id, s), users.id_column)
    for rule in _rules(policy):
        if isinstance(rule, MemberRule):
            m = compiled.table(rule.member.table).c[rule.member.user]
            add(rule.member.table, "member table", lambda s, c=m: _is_subject(c, s), None)
        if isinstance(rule, RoleRule):
            table = rule.role.table or users.table
            c = compiled.table(table).c[rule.role.key or users.id_column]
            add(table, "role table", lambda s, c=c: _is_subject(c, s), None)
    targets = []
    for name in sorted(reach):
        whats = list(dict.fromkeys(what for what, _ in reach[name]))
        predicates = [p for _, p in reach[name]]
        targets.append(
            _Target(
                name=name,
                what=", ".join(whats),
                table=compiled.table(name),
                key=keys.get(name, literal_column("ctid")),
                reach=lambda s, ps=predicates: or_(false(), *(p(s) for p in ps)),
            )
        )
    return targets


def _side(compiled: CompiledPolicy) -> _Target | None:
    k = compiled.policy.knowledge
    if k is None or None not in k.bookkeeping().values():
        return None
    side = sa_table(
        SIDE_TABLE, sa_column("store", Text()), sa_column("chunk_id", Text()), sa_column("parent_id", Text())
    )
    access = compiled.policy.access[k.access]

    def reach(subject: str) -> Any:
        ids = compiled.access_ids(k.access, "read", subject).subquery()
        return side.c.parent_id.in_(select(cast(ids.c[access.key], Text())))

    return _Target(
        SIDE_TABLE, f"bookkeeping of {k.table}", side, side.c.chunk_id, reach, side.c.store == k.table
    )


def _keys(target: _Target, where: Any) -> Any:
    """Up to LIMIT + 1 keys of the target's rows (that ``where`` gives), in key order."""
    statement = select(target.key).select_from(target.table)
    for condition in (target.rows, where):
        if condition is not None:
            statement = statement.where(condition)
    return statement.order_by(target.key).limit(LIMIT + 1)


async def check(database: Database, compiled: CompiledPolicy, *, subjects: int = SUBJECTS) -> Compared:
    """Prove lock 2 on the live database (module docstring); :class:`RlsMismatch` names the first
    table that differs. ``guard.require_lock_two`` (``Database.verify``) is run by the caller."""
    policy = compiled.policy
    await _structure(database, policy)
    targets = _targets(compiled)
    side = _side(compiled)
    if side is not None:
        targets.append(side)
    user_id: Any = compiled.table(policy.users.table).c[policy.users.id_column]
    if policy.users.own:
        # rowscope's accounts: their subjects (an explicit one, or the account's own id).
        own = compiled.table(policy.users.table)
        user_id = func.coalesce(own.c.subject, cast(own.c.id, Text())) if "subject" in own.c else user_id
    compared = Compared()
    async with database.service_transaction() as conn:
        sampled = (await conn.execute(select(user_id).order_by(user_id).limit(subjects))).scalars().all()
        compared.subjects = [str(s) for s in sampled]
        lock1 = {
            (s, t.name): list((await conn.execute(_keys(t, t.reach(s)))).scalars())
            for s in compared.subjects
            for t in targets
        }
    for subject in compared.subjects:
        lock2: dict[str, list[Any]] = {}
        async with database.user_transaction(Caller(_account(subject), subject)) as conn:
            for t in targets:
                try:
                    lock2[t.name] = list((await conn.execute(_keys(t, None))).scalars())
                except DBAPIError as exc:
                    raise RlsMismatch(
                        f"{TOOL_ROLE!r} cannot read table {t.name!r}: {first_line(exc.orig or exc)}"
                    ) from None
        for t in targets:
            one, two = lock1[(subject, t.name)], lock2[t.name]
            if len(one) > LIMIT or len(two) > LIMIT:
                compared.truncated.append(t.name)
                one, two = one[:LIMIT], two[:LIMIT]
            if one != two:
                raise RlsMismatch(_difference(t, subject, one, two))
            sets, keys = compared.tables.get(t.name, (0, 0))
            compared.tables[t.name] = (sets + 1, keys + len(one))
    return compared


def _difference(t: _Target, subject: str, one: Iterable[Any], two: Iterable[Any]) -> str:
    first, second = set(map(str, one)), set(map(str, two))
    more, fewer = sorted(second - first), sorted(first - second)
    said = []
    if more:
        said.append(f"row-level security gives {len(more)} row(s) the policy does not (first: {more[0]})")
    if fewer:
        said.append(f"hides {len(fewer)} row(s) the policy gives (first: {fewer[0]})")
    if not said:  # the same keys, in another order or count: beyond LIMIT
        said.append("the keys differ")
    return (
        f"lock 2 differs from the policy on table {t.name!r} ({t.what}) for subject {subject!r}: "
        f"{' and '.join(said)}; review and apply the SQL of `rowscope rls plan`"
    )
