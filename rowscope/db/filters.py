"""Prisma-style filters from the assistant, planned and built as SQLAlchemy Core with bound parameters.

The grammar (a subset of Prisma's ``where``):

* ``{"field": value}`` — equality (``null`` means IS NULL);
* ``{"field": {op: value, ...}}`` with ``equals, not, in, notIn, lt, lte, gt, gte, contains,
  startsWith, endsWith`` and ``mode: "insensitive"`` for text; ``not`` takes a value or a nested
  filter;
* ``{"field": {op: value, ...}}`` on a list (PostgreSQL array) field, with Prisma's scalar-list
  operators and no others: ``has`` (one value: the list holds it; ``@>``), ``hasSome`` (a list: the
  list holds at least one of them; ``&&``), ``hasEvery`` (a list: the list holds all of them;
  ``@>``), ``isEmpty`` (true or false; ``= '{}'`` or ``<> '{}'``), and ``equals`` (a list: the
  whole list, in order, duplicates counted; ``{"field": [..]}`` for short) or ``null``;
* ``AND`` (object or list), ``OR`` (list) and ``NOT`` (object or list) at any depth.

Only the model's allowlisted columns of a filterable kind (:func:`column_kind`) may be named; every
value is converted to the column's type here (a list's values to its element type), so a malformed
uuid or a wrong type is a clear :class:`FilterError` and never reaches the database. The caller ANDs
the result with the user's scope (``db/policy.py``); nothing here can widen it.

List fields follow PostgreSQL, which is also what a GIN index on the column serves (``@>``, ``&&``
and ``=`` are its operators): a list is a set of values for ``has``/``hasSome``/``hasEvery`` (order
and duplicates do not matter; ``hasEvery: []`` matches every list, ``hasSome: []`` none); a value
may not be ``null`` (a NULL element never matches). A NULL list (no list at all, not an empty one)
matches none of these operators, ``isEmpty`` true or false included — as in Prisma — and ``NOT``
around one does not match it either (SQL's unknown stays unknown, as ``NOT`` around ``in`` drops
NULLs); ``{"field": null}`` finds those rows. Sorting on a list field orders as PostgreSQL orders
arrays (element by element).
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as dt
import decimal
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import pydantic_core
from sqlalchemy import BindParameter, Column, ColumnElement, and_, bindparam, false, func, not_, or_, true
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import postgresql

MAX_DEPTH = 8
MAX_CONDITIONS = 64
MAX_IN_VALUES = 100
MAX_TEXT_VALUE = 1000

COMPARISONS = ("equals", "not", "in", "notIn", "lt", "lte", "gt", "gte")
TEXT_OPERATORS = ("contains", "startsWith", "endsWith")
LIST_OPERATORS = ("has", "hasSome", "hasEvery", "isEmpty")
LIST_FILTERS = ("equals", *LIST_OPERATORS)  # everything a list field takes
OPERATORS = (*COMPARISONS, *TEXT_OPERATORS, "mode", *LIST_OPERATORS)


class FilterError(ValueError):
    """A filter the assistant sent is not valid; the message says what is allowed."""


def column_kind(column: Column[Any]) -> str:
    """The filter-relevant kind of a column: uuid, text, integer, number, boolean, timestamp,
    date, array (a list of one of these: :func:`element_kind`), or other (selectable, never
    filterable or sortable)."""
    if isinstance(column.type, sqltypes.ARRAY):
        return "array" if element_kind(column) != "other" else "other"
    return _type_kind(column.type)


def element_kind(column: Column[Any]) -> str:
    """The kind of an array column's values; "other" for a column that is no array, or whose values
    cannot be compared here: enums and fixed-length ``char(n)`` (which a bound value would be cast
    to, and so cut short), and arrays of arrays."""
    t = column.type
    if not isinstance(t, sqltypes.ARRAY):
        return "other"
    item = t.item_type
    if isinstance(item, sqltypes.ARRAY | sqltypes.Enum | sqltypes.CHAR):
        return "other"
    return _type_kind(item)


def _type_kind(t: Any) -> str:
    if isinstance(t, sqltypes.Uuid | postgresql.UUID):
        return "uuid"
    if isinstance(t, sqltypes.String):
        return "text"
    if isinstance(t, sqltypes.Boolean):
        return "boolean"
    if isinstance(t, sqltypes.Integer):
        return "integer"
    if isinstance(t, sqltypes.Numeric | sqltypes.Float):
        return "number"
    if isinstance(t, sqltypes.DateTime):
        return "timestamp"
    if isinstance(t, sqltypes.Date):
        return "date"
    return "other"


def _to_uuid(field: str, value: Any) -> uuid.UUID:
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise FilterError(f"{field} is a uuid; {value!r} is not a well-formed uuid")


def _to_text(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise FilterError(f"{field} is text; expected a string, got {type(value).__name__}")
    if len(value) > MAX_TEXT_VALUE or "\x00" in value:
        raise FilterError(f"{field}: text values are limited to {MAX_TEXT_VALUE} characters without NUL")
    if not value.isascii() and not is_unicode(value):
        raise FilterError(f"{field}: {NOT_UNICODE}")
    return value


NOT_UNICODE = (
    "the text is not valid Unicode: it holds a lone surrogate (a \\ud800-\\udfff escape without its "
    "pair), which no database text can store; send the characters themselves"
)


def is_unicode(text: str) -> bool:
    """Whether ``text`` can be stored as text: no lone surrogate (JSON's ``"\\ud800"`` parses to one
    in Python, and UTF-8, which PostgreSQL speaks, has no encoding for it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _to_int(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= 2**63:
        raise FilterError(f"{field} is an integer; got {value!r}")
    return value


def _to_number(field: str, value: Any) -> decimal.Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FilterError(f"{field} is a number; got {value!r}")
    return decimal.Decimal(str(value))


def _to_bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise FilterError(f"{field} is a boolean; expected true or false, got {value!r}")
    return value


def _to_timestamp(field: str, value: Any) -> dt.datetime:
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    raise FilterError(f"{field} is a timestamp; expected an ISO 8601 string, got {value!r}")


def _to_date(field: str, value: Any) -> dt.date:
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise FilterError(f"{field} is a date; expected YYYY-MM-DD, got {value!r}")


CONVERTERS: dict[str, Callable[[str, Any], Any]] = {
    "uuid": _to_uuid,
    "text": _to_text,
    "integer": _to_int,
    "number": _to_number,
    "boolean": _to_bool,
    "timestamp": _to_timestamp,
    "date": _to_date,
}


def convert(column: Column[Any], field: str, value: Any) -> Any:
    """``value`` converted to ``column``'s type; ``None`` stays ``None``."""
    if value is None:
        return None
    kind = column_kind(column)
    converter = CONVERTERS.get(kind)
    if converter is None:
        raise FilterError(f"{field} cannot be filtered or sorted on")
    return converter(field, value)


# The bounds of PostgreSQL's integer types, checked for a list's values: unlike a scalar compared
# with a wider integer, a list of them is cast to the column's array type, where a value out of
# range is a database error.
_INT_BOUNDS = ((sqltypes.SmallInteger, 2**15), (sqltypes.BigInteger, 2**63), (sqltypes.Integer, 2**31))


def convert_list(
    column: Column[Any], field: str, op: str, values: list[Any], *, cursor: bool = False
) -> list[Any]:
    """``values``, each converted to the element type of the array ``column``, for ``op``. A
    ``cursor`` holds a row's whole list as this server wrote it: nulls kept, numbers as text."""
    kind = element_kind(column)
    what = f"{op} on {field}, a list of {kind} values"
    item = column.type.item_type  # type: ignore[attr-defined]
    bound = next((b for cls, b in _INT_BOUNDS if isinstance(item, cls)), 2**63)
    converted: list[Any] = []
    for value in values:
        if value is None:
            if not cursor:
                raise FilterError(f"{what}: a value may not be null (a null in a list never matches)")
            converted.append(None)
            continue
        if kind == "number" and cursor and isinstance(value, str):
            converted.append(_cursor_number(value))
            continue
        try:
            v = CONVERTERS[kind]("each value", value)
        except FilterError as exc:
            raise FilterError(f"{what}: {exc}") from None
        if kind == "integer" and not -bound <= v < bound:
            raise FilterError(f"{what}: each value is from {-bound} to {bound - 1}; got {v}")
        converted.append(v)
    return converted


def bind_type(column: Column[Any]) -> Any:
    """The type a value compared with ``column`` is bound as. For an array, the array of its element
    type without length, precision or scale: SQLAlchemy casts a bound list to the type given, and a
    cast to ``varchar(3)[]`` or ``numeric(5,2)[]`` would cut or round the assistant's values into
    ones that match."""
    t = column.type
    if not isinstance(t, sqltypes.ARRAY):
        return t
    item = copy.copy(t.item_type)
    for modifier in ("length", "precision", "scale"):
        if getattr(item, modifier, None) is not None:
            setattr(item, modifier, None)
    return postgresql.ARRAY(item)


# A filter is planned, then built. The plan is everything the SQL text depends on, as a hashable
# *structure* of nested tuples naming allowlisted fields and fixed operators, and apart from it the
# request's *values*, converted, each to be bound by the name the structure gives it ("v0", "v1",
# ... by position). Two requests with equal structures compile to the same SQL and differ only in
# what is bound, so the read tools keep the SQL per structure (``Database.read_shaped``) and a new
# filter of a known form costs its planning and binding, not SQLAlchemy's construction. Every
# rule (validation, conversion, escaping) lives in the planner and only there; the builder turns
# a structure into SQLAlchemy Core and knows no request.

Node = tuple[Any, ...]
TRUE: Node = ("true",)
LIKE_ESCAPE = "/"
_RANGES = {"lt": "__lt__", "lte": "__le__", "gt": "__gt__", "gte": "__ge__"}


def like_pattern(op: str, text: str) -> str:
    """The LIKE pattern (escape character ``/``) matching text that contains, starts with or ends
    with ``text`` literally: ``/``, ``%`` and ``_`` in it escaped, as SQLAlchemy's ``autoescape``
    would, but in our code, so the whole pattern is a value we bind."""
    e = LIKE_ESCAPE
    escaped = text.replace(e, e + e).replace("%", e + "%").replace("_", e + "_")
    if op == "contains":
        return f"%{escaped}%"
    return f"{escaped}%" if op == "startsWith" else f"%{escaped}"


class FilterPlanner:
    """Validates and converts one request's filter and cursor for one model's allowlisted columns,
    into structures (``where``, ``after``) and the values they name (``values``, in order)."""

    def __init__(self, model: str, columns: Mapping[str, Column[Any]]) -> None:
        self.model = model
        self.columns = columns
        self.values: dict[str, Any] = {}
        self._conditions = 0

    def bind(self, value: Any) -> str:
        """The name ``value`` is bound by: its position among this request's values."""
        name = f"v{len(self.values)}"
        self.values[name] = value
        return name

    def where(self, where: Mapping[str, Any] | None) -> Node:
        if where is None:
            return TRUE
        return self._object(where, depth=0)

    def _object(self, where: Any, depth: int) -> Node:
        if not isinstance(where, Mapping):
            raise FilterError("a filter must be an object of fields and AND / OR / NOT")
        if depth > MAX_DEPTH:
            raise FilterError(f"filters may nest at most {MAX_DEPTH} levels deep")
        parts: list[Node] = []
        for key, value in where.items():
            if key == "AND":
                parts.append(("and", self._list(value, depth, key)))
            elif key == "OR":
                if not isinstance(value, list):
                    raise FilterError("OR takes a list of filters")
                parts.append(("or", self._list(value, depth, key)))
            elif key == "NOT":
                parts.append(("not", ("and", self._list(value, depth, key))))
            else:
                parts.append(self._field(key, value, depth))
        return ("and", tuple(parts))

    def _list(self, value: Any, depth: int, key: str) -> tuple[Node, ...]:
        items = value if isinstance(value, list) else [value]
        if not items and key == "OR":
            raise FilterError("OR needs at least one filter")
        return tuple(self._object(item, depth + 1) for item in items)

    def _column(self, field: str) -> Column[Any]:
        column = self.columns.get(field)
        if column is None:
            allowed = ", ".join(self.columns)
            raise FilterError(f"{self.model} has no field {field!r} that may be used; allowed: {allowed}")
        return column

    def _count(self) -> None:
        self._conditions += 1
        if self._conditions > MAX_CONDITIONS:
            raise FilterError(f"a filter may hold at most {MAX_CONDITIONS} conditions")

    def _field(self, field: str, spec: Any, depth: int) -> Node:
        column = self._column(field)
        if column_kind(column) == "array":
            return self._list_field(column, field, spec)
        if not isinstance(spec, Mapping):
            self._count()
            return self._compare(column, field, "equals", spec)
        unknown = [op for op in spec if op not in OPERATORS]
        if unknown:
            raise FilterError(f"unknown operator {unknown[0]!r} on {field}; allowed: {', '.join(OPERATORS)}")
        misplaced = [op for op in spec if op in LIST_OPERATORS]
        if misplaced:
            raise FilterError(f"{misplaced[0]} applies to list fields; {field} is not a list")
        mode = spec.get("mode", "default")
        if mode not in ("default", "insensitive"):
            raise FilterError("mode is 'default' or 'insensitive'")
        insensitive = mode == "insensitive"
        if insensitive and column_kind(column) != "text":
            raise FilterError(f"mode 'insensitive' applies to text fields; {field} is not text")
        parts: list[Node] = []
        for op, value in spec.items():
            if op == "mode":
                continue
            self._count()
            if op == "not" and isinstance(value, Mapping):
                if depth >= MAX_DEPTH:
                    raise FilterError(f"filters may nest at most {MAX_DEPTH} levels deep")
                parts.append(("not", self._field(field, value, depth + 1)))
            else:
                parts.append(self._compare(column, field, op, value, insensitive=insensitive))
        return ("and", tuple(parts))

    def _compare(
        self, column: Column[Any], field: str, op: str, value: Any, *, insensitive: bool = False
    ) -> Node:
        if op in ("in", "notIn"):
            if not isinstance(value, list) or len(value) > MAX_IN_VALUES:
                raise FilterError(f"{op} takes a list of at most {MAX_IN_VALUES} values")
            values = [convert(column, field, v) for v in value if v is not None]
            if insensitive:
                values = [v.lower() for v in values]
            # One parameter per element, so the list's length is part of the structure.
            names = tuple(self.bind(v) for v in values)
            return (op, field, insensitive, names, None in value)
        if op in TEXT_OPERATORS:
            if column_kind(column) != "text":
                raise FilterError(f"{op} applies to text fields; {field} is not text")
            return ("like", field, insensitive, self.bind(like_pattern(op, _to_text(field, value))))
        converted = convert(column, field, value)
        if insensitive and converted is not None:
            converted = converted.lower()
        if op == "equals":
            return ("null", field) if converted is None else ("eq", field, insensitive, self.bind(converted))
        if op == "not":
            return (
                ("notnull", field) if converted is None else ("ne", field, insensitive, self.bind(converted))
            )
        if converted is None:
            raise FilterError(f"{op} needs a value, not null")
        return (op, field, insensitive, self.bind(converted))

    def _list_field(self, column: Column[Any], field: str, spec: Any) -> Node:
        """A filter on a list (array) field: Prisma's scalar-list operators, as PostgreSQL's array
        operators on one bound array each, so the list's length is a value, not structure."""
        if not isinstance(spec, Mapping):
            spec = {"equals": spec}
        parts: list[Node] = []
        for op, value in spec.items():
            if op not in LIST_FILTERS:
                what = f"{field} is a list of {element_kind(column)} values"
                if op == "mode":
                    raise FilterError(f"mode 'insensitive' applies to text fields; {what}")
                if op not in OPERATORS:
                    raise FilterError(
                        f"unknown operator {op!r} on {field}; allowed: {', '.join(LIST_FILTERS)}"
                    )
                hint = "; for the opposite, wrap the filter in NOT" if op == "not" else ""
                raise FilterError(
                    f"{op} does not apply to {field}: {what}; allowed: {', '.join(LIST_FILTERS)}{hint}"
                )
            self._count()
            if op == "isEmpty":
                if not isinstance(value, bool):
                    raise FilterError(f"isEmpty on {field} takes true or false, not {value!r}")
                # Against a bound empty array rather than cardinality(), so a GIN index serves "= '{}'";
                # either way a NULL list is neither empty nor not.
                parts.append(("array", field, "=" if value else "<>", self.bind([])))
                continue
            if op == "equals" and value is None:
                parts.append(("null", field))
                continue
            if op == "has":
                if value is None or isinstance(value, list):
                    raise FilterError(
                        f"has on {field} takes one value, not {'null' if value is None else 'a list'}; "
                        f"for a list use hasSome (any of them) or hasEvery (all of them)"
                    )
                values = [value]
            elif not isinstance(value, list) or len(value) > MAX_IN_VALUES:
                hint = "; for lists that hold one value, use has" if not isinstance(value, list) else ""
                raise FilterError(f"{op} on {field} takes a list of at most {MAX_IN_VALUES} values{hint}")
            else:
                values = value
            converted = convert_list(column, field, op, values)
            # The structure names the SQL operator: has and hasEvery are both "contains" (@>), and
            # equals with [] is isEmpty, so requests that read the same SQL share one statement.
            sql_op = {"equals": "=", "hasSome": "&&"}.get(op, "@>")
            parts.append(("array", field, sql_op, self.bind(converted)))
        return ("and", tuple(parts))

    def after(self, order: list[tuple[str, str]], values: list[Any]) -> Node:
        """Rows strictly after the cursor row in ``order`` (keyset pagination): the structure names
        each key, its direction and whether the cursor's value there is NULL."""
        keys = tuple(
            (
                field,
                direction,
                None if value is None else self.bind(_cursor_value(self.columns[field], field, value)),
            )
            for (field, direction), value in zip(order, values, strict=True)
        )
        return ("after", keys)


class FilterBuilder:
    """Builds a planned structure as SQLAlchemy Core, every value a ``bindparam`` named as the
    structure says and carrying this request's value (``values``) for the statement's first use."""

    def __init__(self, columns: Mapping[str, Column[Any]], values: Mapping[str, Any]) -> None:
        self.columns = columns
        self.values = values
        self._params: dict[str, BindParameter[Any]] = {}

    def param(self, name: str, type_: Any) -> BindParameter[Any]:
        """One parameter object per name, however often the statement uses it."""
        bound = self._params.get(name)
        if bound is None:
            bound = self._params[name] = bindparam(name, self.values[name], type_=type_)
        return bound

    def build(self, node: Node) -> ColumnElement[bool]:
        kind = node[0]
        if kind == "array":
            column, sql_op, name = self.columns[node[1]], node[2], node[3]
            return column.op(sql_op, is_comparison=True)(self.param(name, bind_type(column)))
        if kind == "true":
            return true()
        if kind == "and":
            return and_(true(), *(self.build(part) for part in node[1]))
        if kind == "or":
            return or_(false(), *(self.build(part) for part in node[1]))
        if kind == "after":
            return self._after(node[1])
        if kind == "not":
            return not_(self.build(node[1]))
        column = self.columns[node[1]]
        if kind == "null":
            return column.is_(None)
        if kind == "notnull":
            return column.is_not(None)
        insensitive = node[2]
        target: Any = column_lower(column) if insensitive else column
        if kind in ("in", "notIn"):
            names, with_null = node[3], node[4]
            clause = target.in_([self.param(n, bind_type(column)) for n in names]) if names else false()
            if with_null:
                clause = or_(clause, column.is_(None))
            return clause if kind == "in" else not_(clause)
        value = self.param(node[3], bind_type(column))
        if kind == "like":
            return (
                column.ilike(value, escape=LIKE_ESCAPE)
                if insensitive
                else column.like(value, escape=LIKE_ESCAPE)
            )
        if kind == "eq":
            return target == value  # type: ignore[no-any-return]
        if kind == "ne":
            return or_(target != value, column.is_(None))
        return getattr(target, _RANGES[kind])(value)  # type: ignore[no-any-return]

    def _after(self, keys: tuple[tuple[str, str, str | None], ...]) -> ColumnElement[bool]:
        """Ascending keys sort NULLs last and descending keys NULLs first (PostgreSQL's defaults,
        which the query also states explicitly), so the row after a NULL is well defined."""
        alternatives: list[ColumnElement[bool]] = []
        for i, (field, direction, name) in enumerate(keys):
            column = self.columns[field]
            ties = [
                self.columns[f].is_(None)
                if n is None
                else self.columns[f] == self.param(n, bind_type(self.columns[f]))
                for f, _, n in keys[:i]
            ]
            if direction == "asc":
                step = (
                    false()
                    if name is None
                    else or_(column > self.param(name, bind_type(column)), column.is_(None))
                )
            else:
                step = column.is_not(None) if name is None else column < self.param(name, bind_type(column))
            alternatives.append(and_(true(), *ties, step))
        return or_(false(), *alternatives)


def column_lower(column: Column[Any]) -> Any:
    return func.lower(column)


# -- cursors ----------------------------------------------------------------------------------


def encode_cursor(order: list[tuple[str, str]], values: list[Any]) -> str:
    payload = {"o": order, "v": [_jsonable(v) for v in values]}
    return base64.urlsafe_b64encode(pydantic_core.to_json(payload)).decode()  # compact, UTF-8


def decode_cursor(cursor: str) -> tuple[list[tuple[str, str]], list[Any]]:
    try:
        payload = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        order = [(str(f), str(d)) for f, d in payload["o"]]
        values = list(payload["v"])
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise FilterError("cursor is not one this server issued; pass next_cursor back unchanged") from exc
    if len(order) != len(values):
        raise FilterError("cursor is not one this server issued; pass next_cursor back unchanged")
    return order, values


def _jsonable(value: Any) -> Any:
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _cursor_value(column: Column[Any], field: str, value: Any) -> Any:
    kind = column_kind(column)
    if kind == "number" and isinstance(value, str):
        return _cursor_number(value)
    if kind == "array":
        try:
            if not isinstance(value, list):
                raise FilterError(field)
            return convert_list(column, field, "cursor", value, cursor=True)
        except FilterError as exc:
            raise FilterError("cursor is not one this server issued") from exc
    return convert(column, field, value)


def _cursor_number(value: str) -> decimal.Decimal:
    try:
        return decimal.Decimal(value)
    except decimal.InvalidOperation as exc:
        raise FilterError("cursor is not one this server issued") from exc
