"""The scoping policy (lock 1): a declarative TOML file compiled into SQL predicates with a bound
user id. This module is the only place where "which rows belong to this user" is decided; tools
compose its predicates and never write their own.

The rules, each evaluated against one row ``t`` of the scoped table for the user ``:uid``:

``{ owner = "col" }``
    ``t.col = :uid`` — ownership by a direct column.
``{ flag = "col" }``
    ``t.col IS TRUE`` — only useful inside ``all``.
``{ unset = "col" }``
    ``t.col IS NULL`` — inside ``all`` too: seed 003's root documents (``parentDocumentId`` unset).
``{ member = { table, key, on = "id", user = "user_id", where = { col = [values] } } }``
    ``EXISTS (SELECT 1 FROM table m WHERE m.key = t.on AND m.user = :uid [AND m.col IN values])``
    — membership through a join table.
``{ parent = { column, model | access, references = "id" } }``
    ``t.column IN (SELECT p.references FROM parent p WHERE <the parent's scope>)`` — ownership along
    a foreign-key path (``chat_messages.session_id → chat_sessions.user_id``).
``{ access = "name" }``
    The read rule of a named access rule, applied to the row itself (the row *is* a spark).
``{ role = { column, values, table = <[users] table>, key = <[users] id_column> } }``
    ``EXISTS (SELECT 1 FROM table u WHERE u.key = :uid AND u.column IN values)`` — a property of
    the user, not of the row: inside ``any`` it grants every row to, say, the application's admins.
``{ public = true }``
    Every row, for every signed-in user: for a table the application gives no owner (seed 002).
``{ any = [rules] }`` / ``{ all = [rules] }``
    OR / AND of the rules.

``:uid`` is the *subject*: the application's own id for the signed-in user, as text (its users
table's id, or the id ``rowscope users add --subject`` recorded). It is bound once, as text, and
cast to each compared column's type (``uuid``, ``text``, ``varchar``, ...), so ids of any type work
and every comparison can use the column's index.

Named access rules (``[access.NAME]``) give a table a ``read`` and a ``write`` rule that several
models and the knowledge store share — the seed's "Spark Access": owner OR member OR shared with a
team the user belongs to. Rules are written by the application's developer (trusted); the model
only ever picks among what the policy allows, and its filters are ANDed on top of the scope, never
inside it.
"""

from __future__ import annotations

import decimal
import tomllib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationError,
    model_validator,
)
from sqlalchemy import (
    Column,
    ColumnElement,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    cast,
    exists,
    false,
    or_,
    select,
    true,
)
from sqlalchemy import types as sqltypes

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")]
# A table, optionally schema-qualified (``auth.users``); names are case-sensitive, as PostgreSQL
# stores them (a Prisma model without ``@@map`` is the table ``"User"``).
TableName = Annotated[
    str, StringConstraints(pattern=r"^([A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$")
]


class PolicyError(ValueError):
    """The policy file is invalid or does not match the database."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MemberSpec(_Strict):
    table: TableName
    key: Name
    on: Name = "id"
    user: Name = "user_id"
    where: dict[Name, list[str | int | bool]] = Field(default_factory=dict)


class ParentSpec(_Strict):
    column: Name
    model: Name | None = None
    access: Name | None = None
    references: Name = "id"

    @model_validator(mode="after")
    def _one_target(self) -> ParentSpec:
        if (self.model is None) == (self.access is None):
            raise ValueError("parent names exactly one of `model` or `access`")
        return self


class OwnerRule(_Strict):
    owner: Name


class FlagRule(_Strict):
    flag: Name


class UnsetRule(_Strict):
    unset: Name


class MemberRule(_Strict):
    member: MemberSpec


class ParentRule(_Strict):
    parent: ParentSpec


class AccessRule(_Strict):
    access: Name


class RoleSpec(_Strict):
    column: Name
    values: list[str | int | bool] = Field(min_length=1)
    table: TableName | None = None  # default: the [users] table
    key: Name | None = None  # default: the [users] id_column


class RoleRule(_Strict):
    role: RoleSpec


class PublicRule(_Strict):
    public: Literal[True]


class AnyRule(_Strict):
    any: list[Rule] = Field(min_length=1)


class AllRule(_Strict):
    all: list[Rule] = Field(min_length=1)


RULES: dict[str, type[_Strict]] = {
    "owner": OwnerRule,
    "flag": FlagRule,
    "unset": UnsetRule,
    "member": MemberRule,
    "parent": ParentRule,
    "access": AccessRule,
    "role": RoleRule,
    "public": PublicRule,
    "any": AnyRule,
    "all": AllRule,
}


def _rule_kind(value: Any) -> str | None:
    """Which rule a table is, by its one key: so a mistyped rule is one error that names the rules,
    not one error per kind of rule that it failed to be."""
    return _one_key(value, RULES)


def _one_key(value: Any, kinds: dict[str, type[_Strict]]) -> str | None:
    """The kind of a one-key table (a rule, an on_insert value), by its key (or its parsed class)."""
    if isinstance(value, dict):
        return next(iter(value)) if len(value) == 1 else None
    return next((kind for kind, cls in kinds.items() if isinstance(value, cls)), None)


Rule = Annotated[
    Annotated[OwnerRule, Tag("owner")]
    | Annotated[FlagRule, Tag("flag")]
    | Annotated[UnsetRule, Tag("unset")]
    | Annotated[MemberRule, Tag("member")]
    | Annotated[ParentRule, Tag("parent")]
    | Annotated[AccessRule, Tag("access")]
    | Annotated[RoleRule, Tag("role")]
    | Annotated[PublicRule, Tag("public")]
    | Annotated[AnyRule, Tag("any")]
    | Annotated[AllRule, Tag("all")],
    Discriminator(_rule_kind, custom_error_type="policy_rule", custom_error_message="not a rule"),
]
AnyRule.model_rebuild()  # their fields name Rule, defined only now
AllRule.model_rebuild()


class AccessSpec(_Strict):
    table: TableName
    key: Name = "id"
    read: Rule
    write: Rule


class ModelSpec(_Strict):
    table: TableName
    columns: list[Name] = Field(min_length=1)
    primary_key: Name = "id"
    scope: Rule
    description: str = ""


OWN_USERS = "user_profiles"  # rowscope's own account table (db/models.py UserProfile)


class UsersSpec(_Strict):
    """The application's users: sign-in, ``--user`` and ``users add`` find a user's subject here by
    email. The default, ``user_profiles``, is rowscope's own account table (Spark's users): the
    subject is then the account's id, or the one ``users add --subject`` recorded."""

    table: TableName = "user_profiles"
    id_column: Name = "id"
    email_column: Name = "email"

    @property
    def own(self) -> bool:
        """Whether these are rowscope's own accounts (``user_profiles``), not an application's table."""
        return table_key(self.table) == OWN_USERS


class UserValue(_Strict):
    """``{ user = true }``: the signed-in user's subject (cast to the column's type)."""

    user: Literal[True]


class FixedValue(_Strict):
    """``{ value = ... }``: this value, on every row rowscope inserts."""

    value: str | int | float | bool


class NowValue(_Strict):
    """``{ now = true }``: the transaction's time (a Prisma ``@updatedAt`` column has no default)."""

    now: Literal[True]


class ChunkIndexValue(_Strict):
    """``{ chunk_index = true }``: the chunk's position in the text it was cut from, from 0 (seed
    002's ``chunk_index``, seed 003's ``chunkIndex``)."""

    chunk_index: Literal[True]


INSERT_VALUES: dict[str, type[_Strict]] = {
    "user": UserValue,
    "value": FixedValue,
    "now": NowValue,
    "chunk_index": ChunkIndexValue,
}
InsertValue = Annotated[
    Annotated[UserValue, Tag("user")]
    | Annotated[FixedValue, Tag("value")]
    | Annotated[NowValue, Tag("now")]
    | Annotated[ChunkIndexValue, Tag("chunk_index")],
    Discriminator(
        lambda v: _one_key(v, INSERT_VALUES),
        custom_error_type="policy_insert_value",
        custom_error_message="not an on_insert value",
    ),
]


class KnowledgeSpec(_Strict):
    """The embedding store that retrieval searches and training writes: one row per chunk, each
    under a parent (a *collection*: Spark's spark, Tzurot's personality) that the access rule
    ``access`` guards."""

    table: TableName
    access: Name
    parent_column: Name
    id_column: Name = "id"
    text_column: Name = "content"
    vector_column: Name = "embedding"
    # The vector column's dimension; its type (pgvector ``vector``/``halfvec``, or ``real[]`` /
    # ``double precision[]``) is read from the database. Embedders are asked for this many.
    dimensions: int = Field(gt=0, le=16000)
    # How the assistant is told about the parents: the tools are ``list_<collections>`` and take a
    # ``<collection>_id`` (Spark: ``list_sparks``, ``spark_id``).
    collection: Name = "collection"
    collections: Name = "collections"
    collections_description: str = ""
    parent_label_columns: list[Name] = Field(default_factory=lambda: ["name", "description"])
    # Bookkeeping columns of the application's own table (Spark has them all). Each one unset is
    # kept in rowscope's side table (migration 0014, ``knowledge_chunks``) instead, so an
    # application's table is never altered for rowscope.
    hash_column: Name | None = None
    model_column: Name | None = None
    source_type_column: Name | None = None
    source_id_column: Name | None = None
    metadata_column: Name | None = None
    # The embedding model of the rows the application embedded itself (rows rowscope did not
    # write, or, with a model_column, whose model is this): they are searched when rowscope's own
    # embedder is this model or the policy lists it in ``compatible_models``.
    embedded_with: str | None = None
    compatible_models: list[str] = Field(default_factory=list)
    # Retrieval filters the assistant may use, argument name -> column (``channel = "channelId"``):
    # equality (or one of a list) on search; on add, the value is written into the column.
    filters: dict[Name, Name] = Field(default_factory=dict)
    # Columns rowscope sets on every insert: ``{ user = true }``, ``{ value = ... }``, ``{ now = true }``
    # or ``{ chunk_index = true }``.
    on_insert: dict[Name, InsertValue] = Field(default_factory=dict)
    # A boolean column saying whether a row is in the approximate-search index yet, with the index
    # partial on it (Spark: migration 0007). Set, rowscope inserts chunks with it false, search
    # scores those exactly until the background indexer (db/indexer.py) sets it; unset, chunks are
    # indexed as they are inserted.
    indexed_column: Name | None = None
    # A column holding each vector's sign bits (``bit(dimensions)``, Spark: migration 0008), covered
    # by an index on the parent column. Set, search ranks mid-size readable sets by exact Hamming
    # distance over it and re-ranks the best by exact cosine; unset, they take the HNSW walk.
    bits_column: Name | None = None

    @model_validator(mode="after")
    def _distinct(self) -> KnowledgeSpec:
        if self.collection == self.collections:
            raise ValueError("collection and collections must differ (the singular and the plural)")
        written = {self.parent_column, self.text_column, self.vector_column, self.id_column}
        clash = sorted(written & (set(self.filters.values()) | set(self.on_insert)))
        if clash:
            raise ValueError(f"filters/on_insert may not set the store's own columns: {', '.join(clash)}")
        both = sorted(set(self.filters.values()) & set(self.on_insert))
        if both:
            raise ValueError(f"a column is either a filter or set on insert, not both: {', '.join(both)}")
        return self

    def bookkeeping(self) -> dict[str, str | None]:
        """The bookkeeping columns by role, None where the side table keeps them."""
        return {
            "hash": self.hash_column,
            "model": self.model_column,
            "source_type": self.source_type_column,
            "source_id": self.source_id_column,
            "metadata": self.metadata_column,
        }


class PolicyFile(_Strict):
    version: Literal[1]
    users: UsersSpec = Field(default_factory=UsersSpec)
    access: dict[Name, AccessSpec] = Field(default_factory=dict)
    models: dict[Name, ModelSpec] = Field(min_length=1)
    knowledge: KnowledgeSpec | None = None

    @model_validator(mode="after")
    def _references_resolve(self) -> PolicyFile:
        def check(rule: Rule, where: str, seen: tuple[str, ...]) -> None:
            # ``seen`` holds the models (by name) and access rules (as ``access.NAME``) being
            # expanded, so a rule that reaches itself again is refused here rather than
            # recursing forever when it is compiled.
            if isinstance(rule, AccessRule):
                check_access(rule.access, where, seen)
            if isinstance(rule, ParentRule):
                target = rule.parent.model or rule.parent.access
                assert target is not None
                if rule.parent.model is not None:
                    if target not in self.models:
                        raise ValueError(
                            f"{where}: unknown parent model {target!r}; models: {', '.join(self.models)}"
                        )
                    if target in seen:
                        raise ValueError(f"{where}: parent chain loops through {target!r}")
                    check(self.models[target].scope, f"models.{target}", (*seen, target))
                else:
                    check_access(target, where, seen)
            for child in _children(rule):
                check(child, where, seen)

        def check_access(name: str, where: str, seen: tuple[str, ...]) -> None:
            if name not in self.access:
                raise ValueError(f"{where}: unknown access rule {name!r}; {self._access_names()}")
            if f"access.{name}" in seen:
                raise ValueError(f"{where}: access rule {name!r} refers back to itself")
            check(self.access[name].read, f"access.{name}.read", (*seen, f"access.{name}"))

        for name, spec in self.access.items():
            check(spec.read, f"access.{name}.read", (f"access.{name}",))
            check(spec.write, f"access.{name}.write", ())
        for name, model in self.models.items():
            if model.primary_key not in model.columns:
                raise ValueError(f"models.{name}: the primary key must be among the columns")
            check(model.scope, f"models.{name}", (name,))
        if self.knowledge is not None and self.knowledge.access not in self.access:
            raise ValueError(
                f"knowledge.access: unknown access rule {self.knowledge.access!r}; {self._access_names()}"
            )
        return self

    def _access_names(self) -> str:
        return f"access rules: {', '.join(self.access)}" if self.access else "the policy has no [access.NAME]"

    def table_names(self) -> set[str]:
        """Every table the policy names."""
        return self.rule_tables() | {self.users.table}

    def rule_tables(self) -> set[str]:
        """The tables the policy's models, rules and knowledge store read (the users table only
        where one of them does)."""
        names = {m.table for m in self.models.values()}
        names |= {a.table for a in self.access.values()}
        for rule in self._all_rules():
            if isinstance(rule, MemberRule):
                names.add(rule.member.table)
            if isinstance(rule, RoleRule):
                names.add(rule.role.table or self.users.table)
        if self.knowledge is not None:
            names.add(self.knowledge.table)
        return names

    def _all_rules(self) -> list[Rule]:
        pending: list[Rule] = [m.scope for m in self.models.values()]
        pending += [r for a in self.access.values() for r in (a.read, a.write)]
        found: list[Rule] = []
        while pending:
            rule = pending.pop()
            found.append(rule)
            pending.extend(_children(rule))
        return found


def _children(rule: Rule) -> list[Rule]:
    if isinstance(rule, AnyRule):
        return rule.any
    if isinstance(rule, AllRule):
        return rule.all
    return []


def policy_origin(path: Path | None) -> str:
    """How errors name a policy: its file, or the bundled one."""
    return "the bundled Spark policy" if path is None else f"the policy file {path}"


def load_policy(path: Path | None = None) -> PolicyFile:
    """Parse and validate a policy file; ``None`` gives the bundled Spark policy. Any error is a
    :class:`PolicyError` of one line: the file, the key and what is allowed there."""
    origin = policy_origin(path)
    if path is None:
        raw = resources.files("rowscope.policies").joinpath("spark.toml").read_text("utf-8")
    else:
        try:
            raw = path.read_text("utf-8")
        except OSError as exc:
            raise PolicyError(f"cannot read the policy file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise PolicyError(f"{origin} is not UTF-8 text") from None
    try:
        data = tomllib.loads(raw)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{origin} is not a valid rowscope policy: bad TOML: {exc}") from None
    try:
        return PolicyFile.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(f"{origin}: {condense(exc)}") from None


# pydantic reports every error of a document (and one per kind of rule for a rule it could not
# match); an operator needs the one that says what to fix. A mistyped key is an "extra" error at
# the typo and a "missing" one at the key meant: the first says more, so errors that name what is
# allowed come first, "missing" last.
_RANK = {
    "policy_rule": 0,
    "policy_insert_value": 0,
    "extra_forbidden": 0,
    "literal_error": 0,
    "value_error": 1,
    "missing": 3,
}


def condense(exc: ValidationError) -> str:
    """The most telling of a policy's validation errors, in one line: where (dotted keys) and what
    is allowed there."""
    errors = exc.errors(include_url=False)
    error = min(errors, key=lambda e: _RANK.get(e["type"], 2))
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    if kind == "extra_forbidden":
        loc, what = loc[:-1], f"unknown key {loc[-1]!r}; allowed: {', '.join(_allowed_keys(loc[:-1]))}"
    elif kind == "missing":
        loc, what = loc[:-1], f"missing key {loc[-1]!r}"
    elif kind == "policy_rule":
        if isinstance(value, dict) and len(value) == 1:
            what = f"unknown rule {next(iter(value))!r}"
        elif isinstance(value, dict):
            what = f"a rule has exactly one key, not {len(value)} ({', '.join(map(repr, value)) or 'none'})"
        else:
            what = f'a rule is a table such as {{ owner = "user_id" }}, not {value!r}'
        what += f"; rules: {', '.join(RULES)}"
    elif kind == "policy_insert_value":
        shown = f"{next(iter(value))!r}" if isinstance(value, dict) and len(value) == 1 else repr(value)
        what = (
            f"{shown} is not an on_insert value; one of {{ user = true }}, {{ value = ... }}, "
            "{ now = true }, { chunk_index = true }"
        )
    elif kind == "value_error":
        what = str(error["msg"]).removeprefix("Value error, ")
    else:
        what = f"{error['msg']}, not {value!r}"
    return f"{_dotted(loc)}: {what}" if loc else what


def _dotted(loc: tuple[Any, ...]) -> str:
    """``models.Note.scope.any[0]``: the keys, a rule's kind (pydantic's tag, the same word as the
    key under it) once."""
    out = ""
    previous: Any = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != previous:
            out += f".{part}" if out else str(part)
        previous = part
    return out


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys of the table at ``loc`` in a policy, from the models that describe it."""
    node: Any = PolicyFile
    for part in loc:
        node = _strip(node)
        if get_origin(node) in (Union, UnionType):  # the rules: pydantic's loc names the kind first
            node = RULES.get(str(part))
        elif isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(part))
            node = field.annotation if field is not None else None
        elif get_origin(node) in (dict, list):
            node = get_args(node)[-1]
        else:
            return []
    node = _strip(node)
    return list(node.model_fields) if isinstance(node, type) and issubclass(node, BaseModel) else []


def _strip(node: Any) -> Any:
    """``node`` less ``Annotated`` and ``| None``."""
    while True:
        if get_origin(node) is Annotated:
            node = get_args(node)[0]
        elif get_origin(node) in (Union, UnionType) and type(None) in get_args(node):
            (node,) = (m for m in get_args(node) if m is not type(None))
        else:
            return node


@dataclass(frozen=True)
class ExposedModel:
    """A model the assistant may query: its table and the columns it may see and filter on."""

    name: str
    table: Table
    columns: dict[str, Column[Any]]
    primary_key: str
    description: str

    @cached_property
    def numeric(self) -> frozenset[str]:
        """The columns whose values may be NUMERIC (``Decimal``), which the read tools send as JSON
        numbers; a type that does not say what Python type it holds counts, and is looked at per value."""

        def may_be_decimal(column: Column[Any]) -> bool:
            try:
                return column.type.python_type is decimal.Decimal
            except NotImplementedError:
                return True

        return frozenset(name for name, column in self.columns.items() if may_be_decimal(column))


USER_PARAM = "rowscope_user"  # the bound parameter every predicate names the signed-in user by


def table_key(name: str) -> str:
    """How a policy's table is keyed among reflected tables (SQLAlchemy's ``schema.table``, the
    default schema unqualified)."""
    return name.removeprefix("public.")


def as_subject(bound: Any, column: Any) -> Any:
    """The subject (bound as text) as a value of ``column``'s type: itself for a text column, else
    a cast (``CAST(:rowscope_user AS UUID)``), which the planner folds to a constant, so the
    column's index still serves the comparison."""
    if isinstance(column.type, sqltypes.String):
        return bound
    return cast(bound, column.type)


class CompiledPolicy:
    """A policy bound to the database's tables (reflected), ready to produce predicates for a
    subject (the application's id for the user, as text: module docstring)."""

    def __init__(self, policy: PolicyFile, metadata: MetaData) -> None:
        self._predicates: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self.policy = policy
        self._tables = {
            name: metadata.tables[table_key(name)]
            for name in policy.table_names()
            if table_key(name) in metadata.tables
        }
        missing = sorted(name for name in policy.table_names() if name not in self._tables)
        if missing:
            raise PolicyError(f"the policy names tables the database does not have: {', '.join(missing)}")
        self.models: dict[str, ExposedModel] = {}
        for name, spec in policy.models.items():
            table = self._tables[spec.table]
            self._require(table, spec.columns, f"models.{name}")
            self.models[name] = ExposedModel(
                name=name,
                table=table,
                columns={c: table.c[c] for c in spec.columns},
                primary_key=spec.primary_key,
                description=spec.description,
            )
        for name, spec in policy.models.items():
            self._require_rule(spec.scope, self._tables[spec.table], f"models.{name}")
        for name, access in policy.access.items():
            access_table = self._tables[access.table]
            self._require(access_table, [access.key], f"access.{name}")
            self._require_rule(access.read, access_table, f"access.{name}.read")
            self._require_rule(access.write, access_table, f"access.{name}.write")
        for rule in policy._all_rules():
            if isinstance(rule, MemberRule):
                m = rule.member
                self._require(self._tables[m.table], [m.key, m.user, *m.where], f"member {m.table}")
            if isinstance(rule, RoleRule):
                r = rule.role
                table = self._tables[r.table or policy.users.table]
                self._require(table, [r.key or policy.users.id_column, r.column], f"role {table.fullname}")
        users = self._tables[policy.users.table]
        self._require(users, [policy.users.id_column, policy.users.email_column], "users")
        if policy.knowledge is not None:
            k = policy.knowledge
            optional = [c for c in (*k.bookkeeping().values(), k.indexed_column, k.bits_column) if c]
            self._require(
                self._tables[k.table],
                [
                    k.id_column,
                    k.parent_column,
                    k.text_column,
                    k.vector_column,
                    *optional,
                    *k.filters.values(),
                    *k.on_insert,
                ],
                "knowledge",
            )
            access_table = self._tables[policy.access[k.access].table]
            self._require(access_table, k.parent_label_columns, "knowledge.parent_label_columns")

    @staticmethod
    def _require(table: Table, columns: list[str], where: str) -> None:
        absent = [c for c in columns if c not in table.c]
        if absent:
            raise PolicyError(
                f"{where}: table {table.fullname} has no column(s) {', '.join(absent)}; "
                f"its columns: {', '.join(table.c.keys())}"
            )

    def _require_rule(self, rule: Rule, table: Table, where: str) -> None:
        """Every column a rule names on the row's table (and its parent's) exists, so a policy that
        does not match the database fails on start instead of on the first query."""
        if isinstance(rule, OwnerRule):
            self._require(table, [rule.owner], where)
        elif isinstance(rule, FlagRule):
            self._require(table, [rule.flag], where)
        elif isinstance(rule, UnsetRule):
            self._require(table, [rule.unset], where)
        elif isinstance(rule, MemberRule):
            self._require(table, [rule.member.on], where)
        elif isinstance(rule, ParentRule):
            p = rule.parent
            self._require(table, [p.column], where)
            if p.model is not None:
                parent = self._tables[self.policy.models[p.model].table]
            else:
                assert p.access is not None
                parent = self._tables[self.policy.access[p.access].table]
            self._require(parent, [p.references], where)
        elif isinstance(rule, AccessRule):
            # The access rule is applied to this row, so its columns must exist on this table.
            self._require_rule(self.policy.access[rule.access].read, table, where)
        for child in _children(rule):
            self._require_rule(child, table, where)

    def table(self, name: str) -> Table:
        return self._tables[name]

    # -- predicates -----------------------------------------------------------------------------

    # Building a predicate (aliases, EXISTS subqueries) costs more than running the query it
    # guards, so each is built once per (rule, user, table) and kept in a bounded LRU cache;
    # SQLAlchemy expressions are immutable, so a cached one is safe to reuse in any statement.
    CACHE_SIZE = 4096

    def _cached(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        found = self._predicates.get(key)
        if found is None:
            found = self._predicates[key] = build()
            if len(self._predicates) > self.CACHE_SIZE:
                self._predicates.popitem(last=False)
        else:
            self._predicates.move_to_end(key)
        return found

    def model_scope(self, model: str, subject: str, table: Any = None) -> ColumnElement[bool]:
        """The rows of ``model`` that the user ``subject`` may read, as a predicate on ``table``."""
        spec = self.policy.models[model]
        target = table if table is not None else self._tables[spec.table]
        return self._cached(  # type: ignore[no-any-return]
            ("model", model, subject, target), lambda: self._compile(spec.scope, target, subject)
        )

    def access_predicate(
        self, access: str, mode: Literal["read", "write"], subject: str, table: Any = None
    ) -> ColumnElement[bool]:
        spec = self.policy.access[access]
        rule = spec.read if mode == "read" else spec.write
        target = table if table is not None else self._tables[spec.table]
        return self._cached(  # type: ignore[no-any-return]
            ("access", access, mode, subject, target), lambda: self._compile(rule, target, subject)
        )

    def access_ids(self, access: str, mode: Literal["read", "write"], subject: str) -> Any:
        """``SELECT key FROM <access table> WHERE <rule>``: the ids a user may read or write."""
        spec = self.policy.access[access]

        def build() -> Any:
            t = self._tables[spec.table].alias()
            return select(t.c[spec.key]).where(
                self._compile(spec.read if mode == "read" else spec.write, t, subject)
            )

        return self._cached(("ids", access, mode, subject), build)

    def _compile(self, rule: Rule, t: Any, subject: str) -> ColumnElement[bool]:
        # Every reference to the user is this one named parameter, so a statement's SQL never holds
        # the user's id anywhere else and can be reused for another user by rebinding only it
        # (Database.read_shaped). It is text, cast to each compared column's type.
        bound = bindparam(USER_PARAM, subject, type_=String())
        if isinstance(rule, OwnerRule):
            return t.c[rule.owner] == as_subject(bound, t.c[rule.owner])  # type: ignore[no-any-return]
        if isinstance(rule, FlagRule):
            return t.c[rule.flag].is_(true())  # type: ignore[no-any-return]
        if isinstance(rule, UnsetRule):
            return t.c[rule.unset].is_(None)  # type: ignore[no-any-return]
        if isinstance(rule, MemberRule):
            spec = rule.member
            m = self._tables[spec.table].alias()
            conditions = [m.c[spec.key] == t.c[spec.on], m.c[spec.user] == as_subject(bound, m.c[spec.user])]
            conditions += [m.c[col].in_(values) for col, values in spec.where.items()]
            return exists().where(*conditions)
        if isinstance(rule, RoleRule):
            r = rule.role
            u = self._tables[r.table or self.policy.users.table].alias()
            key = u.c[r.key or self.policy.users.id_column]
            return exists().where(key == as_subject(bound, key), u.c[r.column].in_(r.values))
        if isinstance(rule, PublicRule):
            return true()
        if isinstance(rule, ParentRule):
            p = rule.parent
            if p.model is not None:
                parent = self._tables[self.policy.models[p.model].table].alias()
                predicate = self._compile(self.policy.models[p.model].scope, parent, subject)
            else:
                assert p.access is not None
                parent = self._tables[self.policy.access[p.access].table].alias()
                predicate = self.access_predicate(p.access, "read", subject, parent)
            return t.c[p.column].in_(select(parent.c[p.references]).where(predicate))  # type: ignore[no-any-return]
        if isinstance(rule, AccessRule):
            return self.access_predicate(rule.access, "read", subject, t)
        if isinstance(rule, AnyRule):
            return or_(false(), *(self._compile(r, t, subject) for r in rule.any))
        return and_(true(), *(self._compile(r, t, subject) for r in rule.all))
