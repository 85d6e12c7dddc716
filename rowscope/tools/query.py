"""``query_records`` and ``count_records``: structured, allowlisted reads of the user's own rows.

The model names a model and a Prisma-style filter; never SQL. The filter and cursor are planned
(``db/filters.py``: validated, converted, split into a structure and its values) and the statement
is built with SQLAlchemy Core: the user's scope from the policy, AND the built filter, AND the
cursor, with every value bound by name. The statement is kept per structure, so a filter of a form
seen before is only planned and bound. Only allowlisted scalar columns are selected, so relation
fields and secrets (password hashes, key hashes) cannot be asked for.
"""

from __future__ import annotations

import decimal
from collections.abc import Hashable
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context
from pydantic import BaseModel, Field
from sqlalchemy import Integer, Select, and_, func
from sqlalchemy import select as sql_select

from rowscope.db.filters import (
    FilterBuilder,
    FilterError,
    FilterPlanner,
    column_kind,
    decode_cursor,
    encode_cursor,
)
from rowscope.db.policy import ExposedModel
from rowscope.tools.context import current_caller, runtime
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
            "contains|startsWith|endsWith: value, mode: 'insensitive'}}; on list fields "
            "{field: {has: v} | {hasSome: [..]} | {hasEvery: [..]} | {isEmpty: true|false}}; "
            "combined with AND, OR, NOT."
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


def _json_rows(rows: list[tuple[Any, ...]], exposed: ExposedModel, names: list[str]) -> list[dict[str, Any]]:
    """The rows as the model reads them: a dict of the first ``len(names)`` columns of each row (the
    selected fields, in order; sort keys read only for the cursor come after them), NUMERIC values as
    numbers."""
    made = [dict(zip(names, row, strict=False)) for row in rows]
    for field in names:
        if field in exposed.numeric:
            for row in made:
                row[field] = _to_number(row[field])
    return made


MAX_SHAPE_VALUES = 256  # values one kept statement binds; a request with more is built for each call


def _shape(planner: FilterPlanner, *structure: Hashable) -> tuple[Hashable, ...] | None:
    """A read request's identity less the user and its values, for ``Database.read_shaped``: the
    tool, the model and the structures the planner made of the filter and cursor (everything that
    decides the SQL text, db/filters.py), so requests that differ only in their values share a
    shape; ``None`` when the request binds too many values for its SQL to be worth keeping (long
    IN lists)."""
    return None if len(planner.values) > MAX_SHAPE_VALUES else structure


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
    caller = await current_caller(ctx)
    exposed = exposed_model(ctx, model)
    fields = list(dict.fromkeys(select)) if select else list(exposed.columns)
    unknown = [f for f in fields if f not in exposed.columns]
    if unknown:
        raise FilterError(
            f"{model} has no field {unknown[0]!r} to select; allowed: {', '.join(exposed.columns)}"
        )
    order = _order(exposed, order_by)
    # The columns read, in order: the fields, then any sort key not among them (for the cursor).
    wanted = list(dict.fromkeys([*fields, *(f for f, _ in order)]))
    planner = FilterPlanner(model, exposed.columns)
    condition = planner.where(where)
    after = None
    if cursor is not None:
        cursor_order, cursor_values = decode_cursor(cursor)
        if cursor_order != order:
            raise FilterError("this cursor belongs to a query with a different order_by")
        after = planner.after(order, cursor_values)
    limit = planner.bind(take + 1)

    def build() -> Select[Any]:
        built = FilterBuilder(exposed.columns, planner.values)
        scoped = and_(rt.policy.model_scope(model, caller.subject, exposed.table), built.build(condition))
        if after is not None:
            scoped = and_(scoped, built.build(after))
        return (
            sql_select(*(exposed.columns[f] for f in wanted))
            .where(scoped)
            .order_by(
                *(
                    exposed.columns[f].asc().nulls_last()
                    if d == "asc"
                    else exposed.columns[f].desc().nulls_first()
                    for f, d in order
                )
            )
            .limit(built.param(limit, Integer()))
        )

    shape = _shape(planner, "query", model, tuple(wanted), tuple(order), condition, after)
    rows = await rt.database.read_shaped(caller, shape, build, planner.values)
    more = len(rows) > take
    rows = rows[:take]
    if more:
        last = rows[-1]
        next_cursor = encode_cursor(order, [last[wanted.index(f)] for f, _ in order])
    else:
        next_cursor = None
    # Built from values this function made, unvalidated: the SDK validates the structured content
    # against QueryResult, the tool's output schema, once, when the call returns.
    return QueryResult.model_construct(
        model=model,
        rows=_json_rows(rows, exposed, fields),
        next_cursor=next_cursor,
    )


@translated
async def count_records(ctx: Context[Any], model: ModelName, where: Where = None) -> CountResult:
    """Count the signed-in user's own records of one model that match a filter."""
    rt = runtime(ctx)
    caller = await current_caller(ctx)
    exposed = exposed_model(ctx, model)
    planner = FilterPlanner(model, exposed.columns)
    condition = planner.where(where)

    def build() -> Select[Any]:
        built = FilterBuilder(exposed.columns, planner.values)
        scoped = and_(rt.policy.model_scope(model, caller.subject, exposed.table), built.build(condition))
        return sql_select(func.count().label("count")).select_from(exposed.table).where(scoped)

    shape = _shape(planner, "count", model, condition)
    ((count,),) = await rt.database.read_shaped(caller, shape, build, planner.values)
    return CountResult(model=model, count=count)
