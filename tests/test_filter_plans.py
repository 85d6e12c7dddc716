"""Filters planned into a structure and values (db/filters.py), the SQL kept per structure
(``Database.read_shaped``): requests of one structure with different values each read exactly
their own rows, values are only ever data (LIKE wildcards and SQL-looking text included), cursors
page correctly across a kept statement, and one statement serves every user, built once."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from mcp.client import Client

from rowscope.db import filters
from rowscope.db.filters import FilterError, FilterPlanner
from rowscope.server import demo
from rowscope.server.app import build_mcp, build_runtime
from rowscope.server.runtime import Runtime
from rowscope.server.settings import Settings
from tests.conftest import error_text, portfolio_rows, structured

pytestmark = pytest.mark.anyio

CAROL = demo.CAROL
KIND = "plans"
PREFIXES = [
    "plain",
    "50% off",
    "5_0 off",
    "a/b",
    "back\\slash",
    "x'; DROP TABLE portfolio_items; --",
    "MiXeD",
]
BASE = dt.datetime(2025, 2, 1, tzinfo=dt.UTC)


def _row(i: int) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "user_id": CAROL,
        "kind": KIND,
        "title": f"{PREFIXES[i % len(PREFIXES)]} {i:02d}",
        "description": None if i % 4 == 0 else f"d{i % 3}",
        "url": None if i % 2 else f"https://example.com/{i:02d}",
        "is_watched": i % 3 == 0,
        "created_at": BASE + dt.timedelta(minutes=i // 2),  # ties in twos
    }


ROWS = [_row(i) for i in range(28)]
Pred = Callable[[dict[str, Any]], bool]


@pytest.fixture(scope="module")
def rows(admin: sa.Engine) -> Iterator[list[dict[str, Any]]]:
    """28 portfolio items for carol (kind "plans"), removed again after the module."""
    with portfolio_rows(admin, ROWS) as inserted:
        yield inserted


@pytest.fixture(scope="module")
async def served(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Runtime, Client]]:
    """One runtime (one database, one set of kept statements) behind one in-process client; a test
    switches the user it runs as between calls, as tokens of different users would over HTTP."""
    settings = Settings(
        database_url=database_url, data_dir=tmp_path_factory.mktemp("plans"), openai_api_key=None
    )
    rt = build_runtime(settings, database_url, stdio_user=CAROL)
    async with Client(build_mcp(rt)) as client:
        yield rt, client


@pytest.fixture
def client(served: tuple[Runtime, Client]) -> Client:
    rt, connected = served
    rt.stdio_user = CAROL
    return connected


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts statements built from a structure (FilterBuilder made), on the real path."""
    made: list[int] = []
    original = filters.FilterBuilder.__init__

    def counting(self: filters.FilterBuilder, *args: Any, **kwargs: Any) -> None:
        made.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(filters.FilterBuilder, "__init__", counting)
    return made


def plan(rt: Runtime, where: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    planner = FilterPlanner("PortfolioItem", rt.policy.models["PortfolioItem"].columns)
    return planner.where(where), planner.values


async def read(client: Client, where: dict[str, Any], **extra: Any) -> tuple[set[uuid.UUID], int]:
    """The ids query_records returns and the count count_records gives for ``where`` (within this
    module's rows)."""
    scoped = {"AND": [{"kind": KIND}, where]}
    args = {"model": "PortfolioItem", "where": scoped, "select": ["id"], "take": 100, **extra}
    result = structured(await client.call_tool("query_records", args))
    counted = structured(await client.call_tool("count_records", {"model": "PortfolioItem", "where": scoped}))
    return {uuid.UUID(r["id"]) for r in result["rows"]}, counted["count"]


def _at(minutes: int) -> str:
    return (BASE + dt.timedelta(minutes=minutes)).isoformat()


def _time(minutes: int) -> dt.datetime:
    return BASE + dt.timedelta(minutes=minutes)


# Pairs of filters of one structure with different values, each with what it must select.
PAIRS: list[Any] = [
    pytest.param(
        ({"title": "plain 00"}, lambda r: r["title"] == "plain 00"),
        ({"title": "MiXeD 06"}, lambda r: r["title"] == "MiXeD 06"),
        id="equals",
    ),
    pytest.param(
        ({"title": {"equals": "mixed 13", "mode": "insensitive"}}, lambda r: r["title"] == "MiXeD 13"),
        ({"title": {"equals": "PLAIN 07", "mode": "insensitive"}}, lambda r: r["title"] == "plain 07"),
        id="equals-insensitive",
    ),
    pytest.param(
        ({"description": {"not": "d1"}}, lambda r: r["description"] != "d1"),
        ({"description": {"not": "d2"}}, lambda r: r["description"] != "d2"),
        id="not",
    ),
    pytest.param(
        ({"is_watched": True}, lambda r: r["is_watched"]),
        ({"is_watched": False}, lambda r: not r["is_watched"]),
        id="boolean",
    ),
    pytest.param(
        ({"description": {"in": ["d1", "d2"]}}, lambda r: r["description"] in ("d1", "d2")),
        ({"description": {"in": ["d0", "zz"]}}, lambda r: r["description"] == "d0"),
        id="in",
    ),
    pytest.param(
        ({"description": {"in": ["d1", None]}}, lambda r: r["description"] in ("d1", None)),
        ({"description": {"in": ["d2", None]}}, lambda r: r["description"] in ("d2", None)),
        id="in-with-null",
    ),
    pytest.param(
        (
            {"description": {"notIn": ["d1", "d2"]}},
            lambda r: r["description"] is not None and r["description"] not in ("d1", "d2"),
        ),
        (
            {"description": {"notIn": ["d0", "d1"]}},
            lambda r: r["description"] is not None and r["description"] not in ("d0", "d1"),
        ),
        id="not-in-drops-nulls",
    ),
    pytest.param(
        ({"description": {"notIn": ["d1", None]}}, lambda r: r["description"] not in ("d1", None)),
        ({"description": {"notIn": ["d0", None]}}, lambda r: r["description"] not in ("d0", None)),
        id="not-in-with-null",
    ),
    pytest.param(
        (
            {"created_at": {"gte": _at(3), "lt": _at(6)}},
            lambda r: _time(3) <= r["created_at"] < _time(6),
        ),
        (
            {"created_at": {"gte": _at(9), "lt": _at(13)}},
            lambda r: _time(9) <= r["created_at"] < _time(13),
        ),
        id="range",
    ),
    pytest.param(
        ({"created_at": {"lte": _at(2)}}, lambda r: r["created_at"] <= _time(2)),
        ({"created_at": {"lte": _at(10)}}, lambda r: r["created_at"] <= _time(10)),
        id="lte",
    ),
    pytest.param(
        ({"title": {"contains": "off"}}, lambda r: "off" in r["title"]),
        ({"title": {"contains": "ai"}}, lambda r: "ai" in r["title"]),
        id="contains",
    ),
    pytest.param(
        ({"title": {"startsWith": "mix", "mode": "insensitive"}}, lambda r: r["title"].startswith("MiXeD")),
        ({"title": {"startsWith": "PLA", "mode": "insensitive"}}, lambda r: r["title"].startswith("plain")),
        id="starts-with-insensitive",
    ),
    pytest.param(
        ({"title": {"endsWith": "07"}}, lambda r: r["title"].endswith("07")),
        ({"title": {"endsWith": "3"}}, lambda r: r["title"].endswith("3")),
        id="ends-with",
    ),
    pytest.param(
        (
            {"OR": [{"is_watched": True}, {"NOT": {"description": {"in": ["d1"]}}}]},
            lambda r: r["is_watched"] or r["description"] not in ("d1", None),  # NOT IN drops NULLs
        ),
        (
            {"OR": [{"is_watched": False}, {"NOT": {"description": {"in": ["d2"]}}}]},
            lambda r: not r["is_watched"] or r["description"] not in ("d2", None),
        ),
        id="or-not-nested",
    ),
]


@pytest.mark.parametrize(("first", "second"), PAIRS)
async def test_requests_of_one_structure_with_different_values_each_get_their_own_rows(
    served: tuple[Runtime, Client],
    client: Client,
    rows: list[dict[str, Any]],
    builds: list[int],
    first: tuple[dict[str, Any], Pred],
    second: tuple[dict[str, Any], Pred],
) -> None:
    """Our choice (a statement kept per structure): the second filter reuses the first's statement
    and still selects exactly its own rows, as the operator means them; then the first again."""
    rt, _ = served
    assert plan(rt, first[0])[0] == plan(rt, second[0])[0], "the pair is meant to share a structure"
    for where, predicate in (first, second, first):
        expected = {r["id"] for r in rows if predicate(r)}
        assert await read(client, where) == (expected, len(expected)), where
    # query_records and count_records, each built at most once for the pair's structure.
    assert len(builds) <= 2


LIKE_VALUES = ["%", "_", "/", "\\", "50%", "5_0", "a/b", "/b", "%_", "k\\s", "'; DROP TABLE", "x';"]


@pytest.mark.parametrize("value", LIKE_VALUES)
@pytest.mark.parametrize("op", ["contains", "startsWith", "endsWith"])
@pytest.mark.parametrize("insensitive", [False, True], ids=["default", "insensitive"])
async def test_like_wildcards_escape_characters_and_sql_in_a_value_are_matched_literally(
    client: Client, rows: list[dict[str, Any]], value: str, op: str, insensitive: bool
) -> None:
    """Our choice (the planner escapes LIKE patterns itself, escape character ``/``): ``%``, ``_``,
    ``/`` and ``\\`` in a value match only themselves, and SQL in a value is only text."""
    spec: dict[str, Any] = {op: value, **({"mode": "insensitive"} if insensitive else {})}

    def fold(text: str) -> str:
        return text.lower() if insensitive else text

    def matches(title: str) -> bool:
        title, wanted = fold(title), fold(value)
        if op == "contains":
            return wanted in title
        return title.startswith(wanted) if op == "startsWith" else title.endswith(wanted)

    expected = {r["id"] for r in rows if matches(r["title"])}
    assert await read(client, {"title": spec}) == (expected, len(expected))


async def test_a_value_that_looks_like_sql_is_only_data(
    client: Client, rows: list[dict[str, Any]], admin: sa.Engine
) -> None:
    """No value is rendered into SQL: equality with an SQL-looking title finds that one row, and
    the table is still there."""
    sql_like = next(r for r in rows if r["title"].startswith("x';"))
    assert await read(client, {"title": sql_like["title"]}) == ({sql_like["id"]}, 1)
    assert await read(client, {"title": {"in": ["' OR '1'='1", sql_like["title"]]}}) == ({sql_like["id"]}, 1)
    assert await read(client, {"title": "' OR '1'='1"}) == (set(), 0)
    with admin.connect() as conn:
        assert conn.execute(
            sa.text("SELECT count(*) FROM portfolio_items WHERE kind = :k"), {"k": KIND}
        ).scalar()


async def test_cursor_pages_are_right_across_a_kept_structure(
    client: Client, rows: list[dict[str, Any]], admin: sa.Engine
) -> None:
    """Keyset pages of two filters of one structure, in an order with NULLs and ties, walk each
    filter's rows exactly once, in the database's order, though their pages share statements."""
    for watched in (True, False, True):
        with admin.connect() as conn:
            expected = list(
                conn.execute(
                    sa.text(
                        "SELECT id FROM portfolio_items WHERE user_id = :u AND kind = :k AND is_watched = :w "
                        "ORDER BY description DESC NULLS FIRST, created_at ASC NULLS LAST, id ASC"
                    ),
                    {"u": CAROL, "k": KIND, "w": watched},
                ).scalars()
            )
        walked: list[uuid.UUID] = []
        cursor: str | None = None
        for _ in range(len(expected) + 1):
            args: dict[str, Any] = {
                "model": "PortfolioItem",
                "where": {"kind": KIND, "is_watched": watched},
                "order_by": [{"description": "desc"}, {"created_at": "asc"}],
                "select": ["id"],
                "take": 3,
                **({"cursor": cursor} if cursor else {}),
            }
            page = structured(await client.call_tool("query_records", args))
            walked += [uuid.UUID(r["id"]) for r in page["rows"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert walked == expected, watched


async def test_one_statement_per_structure_serves_every_user_built_once(
    served: tuple[Runtime, Client], admin: sa.Engine, builds: list[int]
) -> None:
    """The statement kept for a structure is rebound to each caller: alice, bob and carol, each with
    new values, each read exactly their own rows (lock 1 with the caller's id, lock 2 regardless),
    and the statement is built once for query_records and once for count_records."""
    rt, client = served
    for user in (demo.ALICE, demo.BOB, demo.CAROL, demo.ALICE):
        rt.stdio_user = user
        title = f"no such title {uuid.uuid4()}"
        where = {"title": {"not": title}}
        with admin.connect() as conn:
            expected = set(
                conn.execute(
                    sa.text("SELECT id FROM portfolio_items WHERE user_id = :u AND title <> :t"),
                    {"u": user, "t": title},
                ).scalars()
            )
        assert 0 < len(expected) < 100
        args = {"model": "PortfolioItem", "where": where, "select": ["id"], "take": 100}
        result = structured(await client.call_tool("query_records", args))
        assert {uuid.UUID(r["id"]) for r in result["rows"]} == expected
        counted = structured(
            await client.call_tool("count_records", {"model": "PortfolioItem", "where": where})
        )
        assert counted["count"] == len(expected)
    assert len(builds) == 2


async def test_bad_input_in_a_known_structure_is_still_refused(client: Client, builds: list[int]) -> None:
    """The planner runs for every request, kept structure or not: a malformed value in the form of
    a filter that ran before is the same clear error, and nothing is built for it."""
    good = {"model": "PortfolioItem", "where": {"id": {"in": [str(uuid.uuid4())]}}}
    structured(await client.call_tool("query_records", good))
    built = len(builds)
    bad = {"model": "PortfolioItem", "where": {"id": {"in": ["not-a-uuid"]}}}
    assert "is not a well-formed uuid" in error_text(await client.call_tool("query_records", bad))
    assert len(builds) == built


def test_the_structure_holds_what_changes_the_sql_and_never_a_value(served: tuple[Runtime, Client]) -> None:
    """Equal structures compile to the same SQL, so the structure changes with everything that
    changes the SQL text: a value turning NULL or back, an IN list's length or a NULL in it, the
    mode, the operator; and a value never appears in it."""
    rt, _ = served
    same = [
        ({"title": "a"}, {"title": "b"}),
        ({"title": {"in": ["a", "b"]}}, {"title": {"in": ["c", "d"]}}),
        ({"title": {"contains": "%"}}, {"title": {"contains": "plain"}}),
        # The three LIKE operators differ only in the pattern, which is a value.
        ({"title": {"startsWith": "a"}}, {"title": {"endsWith": "a"}}),
        ({"created_at": {"lt": _at(1)}}, {"created_at": {"lt": _at(2)}}),
    ]
    for a, b in same:
        assert plan(rt, a)[0] == plan(rt, b)[0], (a, b)
    different = [
        ({"description": "a"}, {"description": None}),
        ({"description": {"not": "a"}}, {"description": {"not": None}}),
        ({"title": {"in": ["a"]}}, {"title": {"in": ["a", "b"]}}),
        ({"title": {"in": ["a"]}}, {"title": {"in": []}}),
        ({"description": {"in": ["a"]}}, {"description": {"in": ["a", None]}}),
        ({"title": {"equals": "a"}}, {"title": {"equals": "a", "mode": "insensitive"}}),
        ({"title": {"contains": "a"}}, {"title": {"equals": "a"}}),
        ({"title": {"contains": "a"}}, {"title": {"contains": "a", "mode": "insensitive"}}),
        ({"title": {"lt": "a"}}, {"title": {"lte": "a"}}),
        ({"title": "a"}, {"url": "a"}),
    ]
    for a, b in different:
        assert plan(rt, a)[0] != plan(rt, b)[0], (a, b)
    structure, values = plan(rt, {"title": {"contains": "50%_/x"}, "url": "secret-value"})
    assert "secret-value" not in repr(structure) and "50%" not in repr(structure)
    assert list(values.values()) == ["%50/%/_//x%", "secret-value"]

    # A cursor: which of its values are NULL is structural, the values themselves are not.
    def after(values: list[Any]) -> Any:
        planner = FilterPlanner("PortfolioItem", rt.policy.models["PortfolioItem"].columns)
        return planner.after([("description", "asc"), ("id", "asc")], values)

    assert after(["x", str(uuid.uuid4())]) == after(["y", str(uuid.uuid4())])
    assert after([None, str(uuid.uuid4())]) != after(["x", str(uuid.uuid4())])
    with pytest.raises(FilterError, match="needs a value, not null"):
        plan(rt, {"title": {"lt": None}})


async def test_read_shaped_refuses_values_that_are_not_the_statements_parameters(
    served: tuple[Runtime, Client],
) -> None:
    """``Database.read_shaped`` keeps a shape only when the values it is to rebind are parameters
    of the statement (and never the user), and a kept shape is never asked for with other names."""
    rt, _ = served
    exposed = rt.policy.models["PortfolioItem"]

    def build(title: str) -> Callable[[], Any]:
        def built() -> Any:
            scope = rt.policy.model_scope("PortfolioItem", str(CAROL), exposed.table)
            return sa.select(exposed.columns["id"]).where(
                scope, exposed.columns["title"] == sa.bindparam("t", title)
            )

        return built

    shape = ("test", uuid.uuid4())
    assert await rt.database.read_shaped(CAROL, shape, build("none such"), {"t": "none such"}) == []
    with pytest.raises(RuntimeError, match="other parameters"):
        await rt.database.read_shaped(CAROL, shape, build("x"), {"u": "x"})
    with pytest.raises(RuntimeError, match="parameters of its statement"):
        await rt.database.read_shaped(CAROL, ("test", uuid.uuid4()), build("x"), {"nope": "x"})
    with pytest.raises(RuntimeError, match="parameters of its statement"):
        await rt.database.read_shaped(CAROL, ("test", uuid.uuid4()), build("x"), {"rowscope_user": CAROL})
