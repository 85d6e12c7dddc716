"""``query_records`` and ``count_records``: structured, allowlisted reads of the user's own rows.

The model names a model and a Prisma-style filter; never SQL. The statement is built with
SQLAlchemy Core: the user's scope from the policy, AND the compiled filter, AND the cursor, with
every value bound. Only allowlisted scalar columns are selected, so relation fields and secrets
(password hashes, key hashes) cannot be asked for.
"""

from __future__ import annotations

import decimal
import json
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context
from pydantic import BaseModel, Field
from sqlalchemy import Select, and_, func
from sqlalchemy import select as sql_select

from rowscope.db.filters import (
    FilterError,
    WhereCompiler,
    after_cursor,
    column_kind,
    decode_cursor,
    encode_cursor,
)
from rowscope.db.policy import ExposedModel
from rowscope.tools.context import current_user, runtime
from rowscope.tools.errors import ToolFailure, translated

DEFAULT_TAKE = 20
MAX_TAKE = 100

Direction = Literal["asc", "desc"]

ModelName = Annotated[str, Field(description="The model to read; the tool description lists them.")]
Where = Annotated[
    dict[str, Any] | None,
    Field(
        description=(
            "Prisma-style filter: {field: value} or {field: {equals|not|in|notIn|lt|lte|gt|gte|"
            "contains|startsWith|endsWith: value, mode: 'insensitive'}}, combined with AND, OR, NOT."
        )
    ),
]


class QueryResult(BaseModel):
    model: str
    rows: list[dict[str, Any]]
    next_cursor: str | None = Field(description="Pass back as `cursor` for the next page; null at the end.")


class CountResult(BaseModel):
    model: str
    count: int


def exposed_model(ctx: Context[Any], name: str) -> ExposedModel:
    models = runtime(ctx).policy.models
    if name not in models:
        raise ToolFailure(f"unknown model {name!r}; allowed: {', '.join(models)}")
    return models[name]


# NUMERIC values are sent as JSON numbers, which is what a model expects of an amount; every other
# non-JSON value a row can hold (UUIDs, dates, times, intervals) is written by pydantic's serializer
# as the result is serialized, in Rust, as RFC 3339 / ISO 8601 text — far cheaper than converting
# each value here (bench/toolcall.py).
def _to_number(value: Any) -> Any:
    return float(value) if isinstance(value, decimal.Decimal) else value


def _needs_numbers(column: Any) -> bool:
    try:
        return column.type.python_type is decimal.Decimal
    except NotImplementedError:  # a type without one: look at each value
        return True


def _json_rows(rows: list[dict[str, Any]], exposed: ExposedModel, fields: list[str]) -> list[dict[str, Any]]:
    """The rows as the model reads them: only ``fields``, in that order, NUMERIC values as numbers.
    The rows are fresh dicts from the database, converted in place, only in the columns that need it."""
    if rows and list(rows[0]) != fields:  # sort keys were read too, or the fields' order differs
        rows = [{f: row[f] for f in fields} for row in rows]
    for field in fields:
        if _needs_numbers(exposed.columns[field]):
            for row in rows:
                row[field] = _to_number(row[field])
    return rows


MAX_SHAPE_FILTER = 2048  # characters of filter JSON; a longer one is built for each call


def _shape(tool: str, model: str, where: dict[str, Any] | None, *rest: Any) -> tuple[Any, ...] | None:
    """A read request's identity less the user, for ``Database.read_shaped``: the tool, the model,
    the filter as its JSON text (dict order kept, so only identical filters share a shape) and the
    rest of what the request asked for, exactly as given; ``None`` when the filter is too long to be
    worth keeping (long IN lists)."""
    text = json.dumps(where, separators=(",", ":"))
    return None if len(text) > MAX_SHAPE_FILTER else (tool, model, text, *rest)


def _order(model: ExposedModel, order_by: list[dict[str, Direction]] | None) -> list[tuple[str, str]]:
    order: list[tuple[str, str]] = []
    for item in order_by or []:
        if len(item) != 1:
            raise FilterError('each order_by entry names one field, e.g. {"created_at": "desc"}')
        ((field, direction),) = item.items()
        if field not in model.columns:
            raise FilterError(
                f"{model.name} has no field {field!r} to sort on; allowed: {', '.join(model.columns)}"
            )
        if column_kind(model.columns[field]) == "other":
            raise FilterError(f"{field} cannot be sorted on")
        order.append((field, direction))
    if model.primary_key not in {f for f, _ in order}:
        order.append((model.primary_key, "asc"))  # a total order, so cursors never skip or repeat
    return order


@translated
async def query_records(
    ctx: Context[Any],
    model: ModelName,
    where: Where = None,
    select: Annotated[
        list[str] | None, Field(description="Fields to return; default: every allowlisted field.")
    ] = None,
    order_by: Annotated[
        list[dict[str, Direction]] | None,
        Field(description='Sort keys in order, e.g. [{"created_at": "desc"}]. The id breaks ties.'),
    ] = None,
    take: Annotated[int, Field(ge=1, le=MAX_TAKE, description="Rows per page.")] = DEFAULT_TAKE,
    cursor: Annotated[str | None, Field(description="next_cursor from the previous page.")] = None,
) -> QueryResult:
    """Read the signed-in user's own records of one model, with filters, sorting and pagination."""
    rt = runtime(ctx)
    user = current_user(ctx)
    exposed = exposed_model(ctx, model)
    fields = list(select) if select else list(exposed.columns)
    unknown = [f for f in fields if f not in exposed.columns]
    if unknown:
        raise FilterError(
            f"{model} has no field {unknown[0]!r} to select; allowed: {', '.join(exposed.columns)}"
        )
    order = _order(exposed, order_by)
    wanted = list(dict.fromkeys([*fields, *(f for f, _ in order)]))

    def build() -> Select[Any]:
        condition = and_(
            rt.policy.model_scope(model, user, exposed.table),
            WhereCompiler(model, exposed.columns).compile(where),
        )
        if cursor is not None:
            cursor_order, values = decode_cursor(cursor)
            if cursor_order != order:
                raise FilterError("this cursor belongs to a query with a different order_by")
            condition = and_(condition, after_cursor(exposed.columns, order, values))
        return (
            sql_select(*(exposed.columns[f] for f in wanted))
            .where(condition)
            .order_by(
                *(
                    exposed.columns[f].asc().nulls_last()
                    if d == "asc"
                    else exposed.columns[f].desc().nulls_first()
                    for f, d in order
                )
            )
            .limit(take + 1)
        )

    shape = _shape("query", model, where, tuple(wanted), tuple(order), take, cursor)
    rows = await rt.database.read_shaped(user, shape, build)
    more = len(rows) > take
    rows = rows[:take]
    next_cursor = encode_cursor(order, [rows[-1][f] for f, _ in order]) if more else None
    return QueryResult(
        model=model,
        rows=_json_rows(rows, exposed, fields),
        next_cursor=next_cursor,
    )


@translated
async def count_records(ctx: Context[Any], model: ModelName, where: Where = None) -> CountResult:
    """Count the signed-in user's own records of one model that match a filter."""
    rt = runtime(ctx)
    user = current_user(ctx)
    exposed = exposed_model(ctx, model)

    def build() -> Select[Any]:
        condition = and_(
            rt.policy.model_scope(model, user, exposed.table),
            WhereCompiler(model, exposed.columns).compile(where),
        )
        return sql_select(func.count().label("count")).select_from(exposed.table).where(condition)

    (row,) = await rt.database.read_shaped(user, _shape("count", model, where), build)
    return CountResult(model=model, count=row["count"])
