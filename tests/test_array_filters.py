"""Prisma's scalar-list filters (``has``, ``hasSome``, ``hasEvery``, ``isEmpty``, ``equals``) on
PostgreSQL array columns (db/filters.py), planned and built as the read tools do and run against
real rows of a table of our own: exact row sets, NULL lists, AND / OR / NOT, values cast without
being cut or rounded, one statement per structure rebound to new values, keyset pages ordered by a
list, the errors for wrong values and operators, and list values in a tool result."""

from __future__ import annotations

import decimal
import secrets
from collections.abc import Iterator
from typing import Any

import pydantic_core
import pytest
import sqlalchemy as sa

from rowscope.db.engine import Database, DatabaseUrl
from rowscope.db.filters import (
    MAX_IN_VALUES,
    FilterBuilder,
    FilterError,
    FilterPlanner,
    column_kind,
    decode_cursor,
    element_kind,
    encode_cursor,
)
from rowscope.db.guard import TOOL_ROLE
from rowscope.server import demo
from rowscope.tools.query import QueryResult
from rowscope.tools.results import CompactResult

MODEL = "Tagged"
D = decimal.Decimal

# id: (label, tags text[], nums int[], codes varchar(3)[], scores numeric(5,2)[])
ROWS: dict[int, tuple[Any, ...]] = {
    1: ("one", ["red", "blue"], [1, 2, 3], ["abc"], [D("1.25")]),
    2: ("two", ["red"], [2], ["xyz", "abc"], [D("2.50")]),
    3: ("three", ["green", "blue", "blue"], [3, 4], [], []),
    4: ("four", [], [], [], []),
    5: ("five", None, None, None, None),
    6: ("six", ["Red", "yellow"], [5, None], ["ab"], [D("3.00")]),
    7: ("seven", ["blue", "red"], [3, 2, 1], ["ab"], None),
}
ALL = set(ROWS)
NOT_NULL = ALL - {5}


@pytest.fixture(scope="module")
def table(admin: sa.Engine) -> Iterator[sa.Table]:
    """A table of our own with list columns and ``ROWS`` in it, reflected as the policy reflects the
    application's tables; dropped after the module."""
    name = f"array_filters_{secrets.token_hex(4)}"
    with admin.begin() as conn:
        conn.execute(
            sa.text(
                f"CREATE TABLE {name} (id integer PRIMARY KEY, label text NOT NULL, tags text[], "
                "nums integer[], codes varchar(3)[], scores numeric(5,2)[])"
            )
        )
        conn.execute(sa.text(f"CREATE INDEX ON {name} USING gin (tags)"))
        conn.execute(sa.text(f"GRANT SELECT ON {name} TO {TOOL_ROLE}"))  # the read tools' role
    try:
        reflected = sa.Table(name, sa.MetaData(), autoload_with=admin)
        with admin.begin() as conn:
            conn.execute(
                sa.insert(reflected),
                [
                    dict(zip(("id", "label", "tags", "nums", "codes", "scores"), (i, *row), strict=True))
                    for i, row in ROWS.items()
                ],
            )
        yield reflected
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))


def columns(table: sa.Table) -> dict[str, sa.Column[Any]]:
    return {c.name: c for c in table.columns}


def plan(table: sa.Table, where: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    planner = FilterPlanner(MODEL, columns(table))
    return planner.where(where), planner.values


def statement(table: sa.Table, structure: Any, values: dict[str, Any]) -> sa.Select[Any]:
    built = FilterBuilder(columns(table), values)
    return sa.select(table.c.id).where(built.build(structure))


def ids(admin: sa.Engine, table: sa.Table, where: dict[str, Any]) -> set[int]:
    structure, values = plan(table, where)
    with admin.connect() as conn:
        return set(conn.execute(statement(table, structure, values)).scalars())


CASES: list[Any] = [
    pytest.param({"tags": {"has": "red"}}, {1, 2, 7}, id="has"),
    pytest.param({"tags": {"has": "RED"}}, set(), id="has-is-case-sensitive"),
    pytest.param({"tags": {"hasSome": ["green", "yellow"]}}, {3, 6}, id="has-some"),
    pytest.param({"tags": {"hasSome": ["nope", "blue"]}}, {1, 3, 7}, id="has-some-one-missing"),
    pytest.param({"tags": {"hasSome": []}}, set(), id="has-some-empty-matches-none"),
    pytest.param({"tags": {"hasEvery": ["red", "blue"]}}, {1, 7}, id="has-every-any-order"),
    pytest.param({"tags": {"hasEvery": ["blue", "blue"]}}, {1, 3, 7}, id="has-every-duplicates-ignored"),
    pytest.param({"tags": {"hasEvery": ["red", "nope"]}}, set(), id="has-every-one-missing"),
    pytest.param({"tags": {"hasEvery": []}}, NOT_NULL, id="has-every-empty-matches-every-list"),
    pytest.param({"tags": {"isEmpty": True}}, {4}, id="is-empty"),
    pytest.param({"tags": {"isEmpty": False}}, NOT_NULL - {4}, id="is-not-empty-skips-null"),
    pytest.param({"tags": {"equals": ["red", "blue"]}}, {1}, id="equals-in-order"),
    pytest.param({"tags": ["blue", "red"]}, {7}, id="equals-shorthand"),
    pytest.param({"tags": {"equals": []}}, {4}, id="equals-empty"),
    pytest.param({"tags": None}, {5}, id="null-list"),
    pytest.param({"tags": {"equals": None}}, {5}, id="equals-null"),
    pytest.param({"NOT": {"tags": None}}, NOT_NULL, id="not-null-list"),
    pytest.param({"NOT": {"tags": {"has": "red"}}}, {3, 4, 6}, id="not-has-skips-null"),
    pytest.param({"NOT": {"tags": {"isEmpty": True}}}, NOT_NULL - {4}, id="not-is-empty-skips-null"),
    pytest.param({"tags": {"has": "red", "isEmpty": False}}, {1, 2, 7}, id="two-operators-and"),
    pytest.param({"OR": [{"tags": {"has": "green"}}, {"tags": {"isEmpty": True}}]}, {3, 4}, id="or"),
    pytest.param({"OR": [{"tags": {"has": "red"}}, {"tags": None}]}, {1, 2, 5, 7}, id="or-null"),
    pytest.param(
        {"AND": [{"tags": {"has": "blue"}}, {"nums": {"hasSome": [4, 5]}}]}, {3}, id="and-two-lists"
    ),
    pytest.param(
        {"tags": {"has": "red"}, "label": {"startsWith": "t"}, "NOT": {"nums": {"has": 1}}},
        {2},
        id="with-scalar-and-not",
    ),
    pytest.param({"nums": {"has": 5}}, {6}, id="int-has-beside-null-element"),
    pytest.param({"nums": {"hasEvery": [1, 2]}}, {1, 7}, id="int-has-every"),
    pytest.param({"nums": {"hasSome": [4, 99]}}, {3}, id="int-has-some"),
    pytest.param({"nums": {"isEmpty": False}}, NOT_NULL - {4}, id="int-is-not-empty"),
    pytest.param({"nums": [3, 2, 1]}, {7}, id="int-equals"),
    # Values are bound as varchar[] / numeric[], never cast to the column's varchar(3) / numeric(5,2),
    # which would cut "abcd" to "abc" or round 1.254 to 1.25 and so match.
    pytest.param({"codes": {"has": "abc"}}, {1, 2}, id="varchar-has"),
    pytest.param({"codes": {"has": "abcd"}}, set(), id="varchar-longer-value-not-cut"),
    pytest.param({"scores": {"has": 1.25}}, {1}, id="numeric-has"),
    pytest.param({"scores": {"hasSome": [1.254, 2.5]}}, {2}, id="numeric-value-not-rounded"),
]


@pytest.mark.parametrize(("where", "expected"), CASES)
def test_list_operators_select_exactly_the_rows_postgresql_says(
    admin: sa.Engine, table: sa.Table, where: dict[str, Any], expected: set[int]
) -> None:
    """Prisma's scalar-list filters with PostgreSQL's array semantics (our documented choice): a
    NULL list matches no operator, isEmpty true or false included, nor NOT around one."""
    assert ids(admin, table, where) == expected


def test_list_columns_are_of_kind_array_with_their_element_kind(table: sa.Table) -> None:
    """Our choice: a reflected ``text[]`` / ``integer[]`` is kind "array", its values' kind beside."""
    kinds = {c.name: (column_kind(c), element_kind(c)) for c in table.columns}
    assert kinds == {
        "id": ("integer", "other"),
        "label": ("text", "other"),
        "tags": ("array", "text"),
        "nums": ("array", "integer"),
        "codes": ("array", "text"),
        "scores": ("array", "number"),
    }


def test_the_sql_uses_array_operators_on_bound_parameters_only(admin: sa.Engine, table: sa.Table) -> None:
    """Our choice: GIN-indexable operators (``@>``, ``&&``, ``=``), every value a bound parameter."""
    where = {
        "tags": {"has": "x'; DROP", "hasSome": ["s1"], "hasEvery": ["e1"], "isEmpty": True},
        "nums": {"equals": [7]},
    }
    structure, values = plan(table, where)
    sql = str(statement(table, structure, values).compile(dialect=admin.dialect))
    assert sql.count("@>") == 2 and sql.count("&&") == 1 and sql.count(" = ") == 2
    assert "DROP" not in sql and "s1" not in sql and "{}" not in sql
    assert list(values.values()) == [["x'; DROP"], ["s1"], ["e1"], [], [7]]


@pytest.mark.parametrize(
    "where",
    [
        pytest.param({"tags": {"has": "red"}}, id="has"),
        pytest.param({"tags": {"hasSome": ["red", "green"]}}, id="has-some"),
        pytest.param({"tags": {"hasEvery": ["red", "blue"]}}, id="has-every"),
        pytest.param({"tags": {"isEmpty": True}}, id="is-empty"),
        pytest.param({"tags": {"equals": ["red"]}}, id="equals"),
    ],
)
def test_list_operators_can_use_a_gin_index(admin: sa.Engine, table: sa.Table, where: dict[str, Any]) -> None:
    """Our choice: the operators are ones a GIN index on the column serves (the planner picks it when
    a sequential scan is ruled out)."""
    structure, values = plan(table, where)
    compiled = statement(table, structure, values).compile(dialect=admin.dialect)
    with admin.begin() as conn:
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        explained = "\n".join(conn.exec_driver_sql(f"EXPLAIN {compiled}", compiled.params).scalars())
    assert f"Bitmap Index Scan on {table.name}_tags_idx" in explained, explained


def test_the_structure_holds_the_operator_and_never_a_value_or_a_list_length(table: sa.Table) -> None:
    """Our choice (statements kept per structure, db/filters.py): a list is one bound array, so its
    length is a value; the SQL operator and NULL-ness are structure."""
    same: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"tags": {"has": "a"}}, {"tags": {"has": "b"}}),
        ({"tags": {"hasSome": ["a"]}}, {"tags": {"hasSome": ["a", "b", "c"]}}),
        ({"tags": {"hasEvery": []}}, {"tags": {"hasEvery": ["a", "b"]}}),
        ({"tags": ["a"]}, {"tags": {"equals": ["b", "c"]}}),
        # The same SQL (``@>`` with one array), so one statement serves both.
        ({"tags": {"has": "a"}}, {"tags": {"hasEvery": ["a", "b"]}}),
    ]
    for a, b in same:
        assert plan(table, a)[0] == plan(table, b)[0], (a, b)
    different: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"tags": {"has": "a"}}, {"tags": {"hasSome": ["a"]}}),
        ({"tags": {"isEmpty": True}}, {"tags": {"isEmpty": False}}),
        ({"tags": {"equals": None}}, {"tags": {"equals": []}}),
        ({"tags": {"has": "a"}}, {"codes": {"has": "a"}}),
        ({"tags": {"hasSome": ["a"]}}, {"NOT": {"tags": {"hasSome": ["a"]}}}),
    ]
    for a, b in different:
        assert plan(table, a)[0] != plan(table, b)[0], (a, b)
    structure, values = plan(table, {"tags": {"hasSome": ["secret-tag"]}, "nums": {"has": 41}})
    assert "secret-tag" not in repr(structure) and "41" not in repr(structure)
    assert list(values.values()) == [["secret-tag"], [41]]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(({"tags": {"has": "red"}}, {1, 2, 7}), ({"tags": {"has": "green"}}, {3}), id="has"),
        pytest.param(
            ({"tags": {"hasSome": ["yellow"]}}, {6}),
            ({"tags": {"hasSome": ["green", "red", "nope"]}}, {1, 2, 3, 7}),
            id="has-some-other-length",
        ),
        pytest.param(
            ({"nums": {"hasEvery": [1, 2, 3]}}, {1, 7}),
            ({"nums": {"hasEvery": []}}, NOT_NULL),
            id="has-every",
        ),
    ],
)
def test_a_statement_built_for_one_request_serves_another_of_its_structure(
    admin: sa.Engine,
    table: sa.Table,
    first: tuple[dict[str, Any], set[int]],
    second: tuple[dict[str, Any], set[int]],
) -> None:
    """Our choice, as ``Database.read_shaped`` keeps SQL per structure: the statement built for the
    first request, rebound to the second's values, selects exactly the second's rows."""
    (where_a, expected_a), (where_b, expected_b) = first, second
    structure, values_a = plan(table, where_a)
    structure_b, values_b = plan(table, where_b)
    assert structure == structure_b
    kept = statement(table, structure, values_a)
    with admin.connect() as conn:
        assert set(conn.execute(kept).scalars()) == expected_a
        assert set(conn.execute(kept, values_b).scalars()) == expected_b


@pytest.mark.anyio
async def test_the_read_tools_path_keeps_one_statement_and_rebinds_list_values(
    database_url: str, table: sa.Table
) -> None:
    """``Database.read_shaped``, as query_records runs a filter (tool role, kept SQL per structure,
    values through their bind processors): requests of one structure, built once, each read their
    own rows."""
    database = Database(DatabaseUrl.parse(database_url), pool_size=1)
    built: list[int] = []
    requests = [
        ({"tags": {"hasSome": ["yellow"]}, "nums": {"isEmpty": False}}, {6}),
        ({"tags": {"hasSome": ["green", "red"]}, "nums": {"isEmpty": False}}, {1, 2, 3, 7}),
        ({"tags": {"hasSome": []}, "nums": {"isEmpty": False}}, set()),
    ]
    try:
        for where, expected in requests:
            structure, values = plan(table, where)

            def build(structure: Any = structure, values: dict[str, Any] = values) -> sa.Select[Any]:
                built.append(1)
                return statement(table, structure, values)

            rows = await database.read_shaped(demo.CAROL, ("arrays", structure), build, values)
            assert {row[0] for row in rows} == expected, where
    finally:
        await database.dispose()
    assert len(built) == 1


@pytest.mark.parametrize(
    ("order", "sql_order"),
    [
        pytest.param([("tags", "asc"), ("id", "asc")], "tags ASC NULLS LAST, id ASC", id="tags-asc"),
        pytest.param([("nums", "desc"), ("id", "asc")], "nums DESC NULLS FIRST, id ASC", id="nums-desc"),
        pytest.param([("scores", "asc"), ("id", "desc")], "scores ASC NULLS LAST, id DESC", id="numeric"),
    ],
)
def test_keyset_pages_ordered_by_a_list_walk_every_row_once(
    admin: sa.Engine, table: sa.Table, order: list[tuple[str, str]], sql_order: str
) -> None:
    """Our choice: a list field sorts as PostgreSQL orders arrays, and its cursor (a whole list,
    NULL elements and NUMERIC values included) pages exactly as the database orders."""
    with admin.connect() as conn:
        expected = list(conn.execute(sa.text(f"SELECT id FROM {table.name} ORDER BY {sql_order}")).scalars())
        walked: list[int] = []
        cursor: str | None = None
        for _ in range(len(expected) + 1):
            planner = FilterPlanner(MODEL, columns(table))
            condition = planner.where(None)
            after = planner.after(order, decode_cursor(cursor)[1]) if cursor else None
            built = FilterBuilder(columns(table), planner.values)
            keys = [table.c[f] for f, _ in order]
            query = (
                sa.select(table.c.id, *keys)
                .where(built.build(condition), *([built.build(after)] if after is not None else []))
                .order_by(
                    *(
                        c.asc().nulls_last() if d == "asc" else c.desc().nulls_first()
                        for c, (_, d) in zip(keys, order, strict=True)
                    )
                )
                .limit(3)
            )
            page = conn.execute(query).all()
            walked += [row.id for row in page]
            if len(page) < 3:
                break
            cursor = encode_cursor(order, list(page[-1])[1:])
    assert walked == expected


ERRORS: list[Any] = [
    pytest.param(
        {"tags": {"has": 1}}, r"has on tags, a list of text values: each value is text", id="has-type"
    ),
    pytest.param({"nums": {"has": "x"}}, r"has on nums, a list of integer values: .*integer", id="int-type"),
    pytest.param({"nums": {"hasSome": [1, True]}}, r"hasSome on nums, .*integer; got True", id="bool-no-int"),
    pytest.param(
        {"nums": {"hasEvery": [1, 2**40]}},
        r"hasEvery on nums.* from -2147483648 to 2147483647",
        id="int-range",
    ),
    pytest.param({"scores": {"has": "1.5"}}, r"has on scores, a list of number values", id="number-type"),
    pytest.param({"tags": {"has": "x" * 1001}}, r"has on tags.*limited to 1000 characters", id="text-length"),
    pytest.param(
        {"tags": {"has": ["a"]}}, r"has on tags takes one value, not a list; .*hasSome", id="has-list"
    ),
    pytest.param({"tags": {"has": None}}, r"has on tags takes one value, not null", id="has-null"),
    pytest.param(
        {"tags": {"hasSome": "a"}}, r"hasSome on tags takes a list of at most 100", id="some-scalar"
    ),
    pytest.param({"tags": "red"}, r"equals on tags takes a list .*use has", id="shorthand-scalar"),
    pytest.param(
        {"tags": {"hasEvery": ["a"] * (MAX_IN_VALUES + 1)}},
        rf"hasEvery on tags takes a list of at most {MAX_IN_VALUES}",
        id="too-many",
    ),
    pytest.param({"tags": {"hasSome": ["a", None]}}, r"hasSome on tags.*may not be null", id="null-value"),
    pytest.param({"tags": {"equals": [None]}}, r"equals on tags.*may not be null", id="equals-null-value"),
    pytest.param({"tags": {"isEmpty": "yes"}}, r"isEmpty on tags takes true or false", id="is-empty-type"),
    pytest.param({"tags": {"isEmpty": None}}, r"isEmpty on tags takes true or false", id="is-empty-null"),
    pytest.param(
        {"tags": {"contains": "a"}},
        r"contains does not apply to tags: tags is a list of text values; "
        r"allowed: equals, has, hasSome, hasEvery, isEmpty$",
        id="text-operator-on-list",
    ),
    pytest.param(
        {"nums": {"lt": 3}}, r"lt does not apply to nums: nums is a list of integer", id="range-on-list"
    ),
    pytest.param({"tags": {"in": [["a"]]}}, r"in does not apply to tags", id="in-on-list"),
    pytest.param(
        {"tags": {"not": {"has": "a"}}}, r"not does not apply to tags.*wrap the filter in NOT", id="not"
    ),
    pytest.param(
        {"tags": {"has": "a", "mode": "insensitive"}},
        r"mode 'insensitive' applies to text fields; tags is a list of text values",
        id="mode-on-list",
    ),
    pytest.param(
        {"tags": {"hasAll": ["a"]}},
        r"unknown operator 'hasAll' on tags; allowed: equals, has, hasSome, hasEvery, isEmpty",
        id="unknown-on-list",
    ),
    pytest.param(
        {"label": {"has": "a"}}, r"has applies to list fields; label is not a list", id="has-on-text"
    ),
    pytest.param({"id": {"hasSome": [1]}}, r"hasSome applies to list fields; id is not a list", id="on-int"),
    pytest.param(
        {"label": {"isEmpty": True}}, r"isEmpty applies to list fields; label is not a list", id="empty"
    ),
]


@pytest.mark.parametrize(("where", "message"), ERRORS)
def test_wrong_values_and_operators_are_a_filter_error_naming_field_and_operator(
    table: sa.Table, where: dict[str, Any], message: str
) -> None:
    """Our choice (as for scalar fields): refused while planning, before any SQL, saying the field,
    the operator and what is allowed."""
    with pytest.raises(FilterError, match=message):
        plan(table, where)


def test_a_cursor_list_of_the_wrong_type_is_refused_as_not_ours(table: sa.Table) -> None:
    """A cursor is ours to read: a tampered list in it is the cursor error, not a filter error."""
    planner = FilterPlanner(MODEL, columns(table))
    for value in (["not-an-int"], "not-a-list"):
        with pytest.raises(FilterError, match="cursor is not one this server issued"):
            planner.after([("nums", "asc"), ("id", "asc")], [value, 1])


def test_list_values_in_a_result_are_json_arrays(admin: sa.Engine, table: sa.Table) -> None:
    """query_records' result (``QueryResult`` through ``CompactResult``, as the tool returns it)
    holds a list column as a JSON array, a NULL list as null, NUMERIC elements as decimal text."""
    with admin.connect() as conn:
        rows = conn.execute(sa.select(table).where(table.c.id.in_([1, 5, 6])).order_by(table.c.id)).mappings()
        result = QueryResult.model_construct(model=MODEL, rows=[dict(r) for r in rows], next_cursor=None)
    sent = pydantic_core.from_json(CompactResult.of(result).serialized)
    assert sent["rows"] == [
        {
            "id": 1,
            "label": "one",
            "tags": ["red", "blue"],
            "nums": [1, 2, 3],
            "codes": ["abc"],
            "scores": ["1.25"],
        },
        {"id": 5, "label": "five", "tags": None, "nums": None, "codes": None, "scores": None},
        {
            "id": 6,
            "label": "six",
            "tags": ["Red", "yellow"],
            "nums": [5, None],
            "codes": ["ab"],
            "scores": ["3.00"],
        },
    ]
