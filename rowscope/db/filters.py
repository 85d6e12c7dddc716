"""Prisma-style filters from the assistant, compiled to SQLAlchemy Core with bound parameters.

The grammar (a subset of Prisma's ``where``):

* ``{"field": value}`` — equality (``null`` means IS NULL);
* ``{"field": {op: value, ...}}`` with ``equals, not, in, notIn, lt, lte, gt, gte, contains,
  startsWith, endsWith`` and ``mode: "insensitive"`` for text; ``not`` takes a value or a nested
  filter;
* ``AND`` (object or list), ``OR`` (list) and ``NOT`` (object or list) at any depth.

Only the model's allowlisted scalar columns may be named; every value is converted to the column's
type here, so a malformed uuid or a wrong type is a clear :class:`FilterError` and never reaches
the database. The caller ANDs the result with the user's scope (``db/policy.py``); nothing here can
widen it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import decimal
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Column, ColumnElement, and_, false, func, literal, not_, or_, true
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import postgresql

MAX_DEPTH = 8
MAX_CONDITIONS = 64
MAX_IN_VALUES = 100
MAX_TEXT_VALUE = 1000

COMPARISONS = ("equals", "not", "in", "notIn", "lt", "lte", "gt", "gte")
TEXT_OPERATORS = ("contains", "startsWith", "endsWith")
OPERATORS = (*COMPARISONS, *TEXT_OPERATORS, "mode")


class FilterError(ValueError):
    """A filter the assistant sent is not valid; the message says what is allowed."""


def column_kind(column: Column[Any]) -> str:
    """The filter-relevant kind of a column: uuid, text, integer, number, boolean, timestamp,
    date, or other (selectable, never filterable)."""
    t = column.type
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
    return value


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


class WhereCompiler:
    """Compiles one ``where`` object for one model's allowlisted columns."""

    def __init__(self, model: str, columns: Mapping[str, Column[Any]]) -> None:
        self.model = model
        self.columns = columns
        self._conditions = 0

    def compile(self, where: Mapping[str, Any] | None) -> ColumnElement[bool]:
        if where is None:
            return true()
        return self._object(where, depth=0)

    def _object(self, where: Any, depth: int) -> ColumnElement[bool]:
        if not isinstance(where, Mapping):
            raise FilterError("a filter must be an object of fields and AND / OR / NOT")
        if depth > MAX_DEPTH:
            raise FilterError(f"filters may nest at most {MAX_DEPTH} levels deep")
        parts: list[ColumnElement[bool]] = []
        for key, value in where.items():
            if key == "AND":
                parts.append(and_(true(), *self._list(value, depth, key)))
            elif key == "OR":
                if not isinstance(value, list):
                    raise FilterError("OR takes a list of filters")
                parts.append(or_(false(), *self._list(value, depth, key)))
            elif key == "NOT":
                parts.append(not_(and_(true(), *self._list(value, depth, key))))
            else:
                parts.append(self._field(key, value, depth))
        return and_(true(), *parts)

    def _list(self, value: Any, depth: int, key: str) -> list[ColumnElement[bool]]:
        items = value if isinstance(value, list) else [value]
        if not items and key == "OR":
            raise FilterError("OR needs at least one filter")
        return [self._object(item, depth + 1) for item in items]

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

    def _field(self, field: str, spec: Any, depth: int) -> ColumnElement[bool]:
        column = self._column(field)
        if not isinstance(spec, Mapping):
            self._count()
            return self._compare(column, field, "equals", spec)
        unknown = [op for op in spec if op not in OPERATORS]
        if unknown:
            raise FilterError(f"unknown operator {unknown[0]!r} on {field}; allowed: {', '.join(OPERATORS)}")
        mode = spec.get("mode", "default")
        if mode not in ("default", "insensitive"):
            raise FilterError("mode is 'default' or 'insensitive'")
        insensitive = mode == "insensitive"
        if insensitive and column_kind(column) != "text":
            raise FilterError(f"mode 'insensitive' applies to text fields; {field} is not text")
        parts: list[ColumnElement[bool]] = []
        for op, value in spec.items():
            if op == "mode":
                continue
            self._count()
            if op == "not" and isinstance(value, Mapping):
                if depth >= MAX_DEPTH:
                    raise FilterError(f"filters may nest at most {MAX_DEPTH} levels deep")
                parts.append(not_(self._field(field, value, depth + 1)))
            else:
                parts.append(self._compare(column, field, op, value, insensitive=insensitive))
        return and_(true(), *parts)

    def _compare(
        self, column: Column[Any], field: str, op: str, value: Any, *, insensitive: bool = False
    ) -> ColumnElement[bool]:
        target: Any = column
        if op in ("in", "notIn"):
            if not isinstance(value, list) or len(value) > MAX_IN_VALUES:
                raise FilterError(f"{op} takes a list of at most {MAX_IN_VALUES} values")
            values = [convert(column, field, v) for v in value if v is not None]
            if insensitive:
                values = [v.lower() for v in values]
                target = column_lower(column)
            clause = target.in_(values) if values else false()
            if None in value:
                clause = or_(clause, column.is_(None))
            return clause if op == "in" else not_(clause)
        if op in TEXT_OPERATORS:
            if column_kind(column) != "text":
                raise FilterError(f"{op} applies to text fields; {field} is not text")
            text = _to_text(field, value)
            if op == "contains":
                return (
                    column.icontains(text, autoescape=True)
                    if insensitive
                    else column.contains(text, autoescape=True)
                )
            if op == "startsWith":
                return (
                    column.istartswith(text, autoescape=True)
                    if insensitive
                    else column.startswith(text, autoescape=True)
                )
            return (
                column.iendswith(text, autoescape=True)
                if insensitive
                else column.endswith(text, autoescape=True)
            )
        converted = convert(column, field, value)
        if insensitive and converted is not None:
            target, converted = column_lower(column), converted.lower()
        if op == "equals":
            return column.is_(None) if converted is None else target == converted
        if op == "not":
            return column.is_not(None) if converted is None else or_(target != converted, column.is_(None))
        if converted is None:
            raise FilterError(f"{op} needs a value, not null")
        ops = {"lt": "__lt__", "lte": "__le__", "gt": "__gt__", "gte": "__ge__"}
        # Bound explicitly: SQLAlchemy refuses ``<`` / ``>`` against a bare Python True/False.
        return getattr(target, ops[op])(literal(converted, column.type))  # type: ignore[no-any-return]


def column_lower(column: Column[Any]) -> Any:
    return func.lower(column)


# -- cursors ----------------------------------------------------------------------------------


def encode_cursor(order: list[tuple[str, str]], values: list[Any]) -> str:
    payload = {"o": order, "v": [_jsonable(v) for v in values]}
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()


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
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def after_cursor(
    columns: Mapping[str, Column[Any]], order: list[tuple[str, str]], values: list[Any]
) -> ColumnElement[bool]:
    """Rows strictly after the cursor row in ``order`` (keyset pagination).

    Ascending keys sort NULLs last and descending keys NULLs first (PostgreSQL's defaults, which
    the query also states explicitly), so the row after a NULL is well defined.
    """
    alternatives: list[ColumnElement[bool]] = []
    for i, (field, direction) in enumerate(order):
        column = columns[field]
        # Bound explicitly: SQLAlchemy refuses ``<`` / ``>`` against a bare Python True/False.
        value = None if values[i] is None else literal(_cursor_value(column, field, values[i]), column.type)
        ties = [
            columns[f].is_(None) if v is None else columns[f] == _cursor_value(columns[f], f, v)
            for (f, _), v in zip(order[:i], values[:i], strict=True)
        ]
        if direction == "asc":
            step = false() if value is None else or_(column > value, column.is_(None))
        else:
            step = column.is_not(None) if value is None else column < value
        alternatives.append(and_(true(), *ties, step))
    return or_(false(), *alternatives)


def _cursor_value(column: Column[Any], field: str, value: Any) -> Any:
    if column_kind(column) == "number" and isinstance(value, str):
        try:
            return decimal.Decimal(value)
        except decimal.InvalidOperation as exc:
            raise FilterError("cursor is not one this server issued") from exc
    return convert(column, field, value)
