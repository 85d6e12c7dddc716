"""query_records / count_records through the in-process MCP client: selection, sorting, keyset
pagination, every filter operator, and clear tool errors for bad input."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
import sqlalchemy as sa
from mcp.client import Client

from rowscope.server.app import build_mcp, build_runtime
from rowscope.server.settings import Settings
from tests.conftest import USERS, error_text, portfolio_rows, structured

pytestmark = pytest.mark.anyio

CAROL = USERS["carol"]
KIND = "probe"
PREFIXES = ["Alpha", "beta", "GAMMA", "50% off", "snake_case", "back\\slash", "O'Brien"]
BASE = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def _probe(i: int) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "user_id": CAROL,
        "kind": KIND,
        "title": f"{PREFIXES[i % len(PREFIXES)]} {i:02d}",
        "description": None if i % 4 == 0 else f"desc {i % 5}",
        "url": None if i % 2 else f"https://example.com/{i:02d}",
        "is_watched": i % 3 == 0,
        "created_at": BASE + dt.timedelta(minutes=i // 3),  # ties in threes
    }


PROBES = [_probe(i) for i in range(45)]


@pytest.fixture(scope="module")
def probes(admin: sa.Engine) -> Iterator[list[dict[str, Any]]]:
    """45 extra portfolio items for carol (kind "probe"), removed again after the module."""
    with portfolio_rows(admin, PROBES) as inserted:
        yield inserted


@pytest.fixture(scope="module")
async def clients(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Client]]:
    settings = Settings(database_url=database_url, data_dir=tmp_path_factory.mktemp("q"), openai_api_key=None)
    async with AsyncExitStack() as stack:
        connected: dict[str, Client] = {}
        for name, user in USERS.items():
            server = build_mcp(build_runtime(settings, database_url, stdio_user=user))
            connected[name] = await stack.enter_async_context(Client(server))
        yield connected


async def query(client: Client, **args: Any) -> dict[str, Any]:
    return structured(await client.call_tool("query_records", args))


def ids(rows: list[dict[str, Any]]) -> list[uuid.UUID]:
    return [uuid.UUID(r["id"]) for r in rows]


# -- select, order, take -----------------------------------------------------------------------------


async def test_select_returns_only_the_named_fields(clients: dict[str, Client], probes: list[Any]) -> None:
    """Our choice: select limits the returned fields, in the order asked."""
    result = await query(
        clients["carol"], model="PortfolioItem", where={"kind": KIND}, select=["title", "url"]
    )
    assert all(list(r) == ["title", "url"] for r in result["rows"])


async def test_without_select_every_allowlisted_field_and_no_other_is_returned(
    clients: dict[str, Client],
) -> None:
    """Our choice (ARCHITECTURE "returns only allowlisted scalar columns")."""
    rows = (await query(clients["alice"], model="PortfolioItem"))["rows"]
    assert rows
    assert all(
        set(r) == {"id", "kind", "title", "description", "url", "is_watched", "created_at", "updated_at"}
        for r in rows
    )


@pytest.mark.parametrize("direction", [pytest.param("asc", id="asc"), pytest.param("desc", id="desc")])
async def test_order_by_sorts_and_the_id_breaks_ties(
    clients: dict[str, Client], probes: list[dict[str, Any]], direction: str
) -> None:
    """Our choice: ties on the sort key are broken by the id ascending, a total order."""
    result = await query(
        clients["carol"],
        model="PortfolioItem",
        where={"kind": KIND},
        order_by=[{"created_at": direction}],
        select=["id", "created_at"],
        take=100,
    )
    expected = sorted(probes, key=lambda p: p["id"])
    expected.sort(key=lambda p: p["created_at"], reverse=direction == "desc")
    assert ids(result["rows"]) == [p["id"] for p in expected]


async def test_take_defaults_to_20_and_allows_up_to_100(
    clients: dict[str, Client], probes: list[Any]
) -> None:
    """Our choice (tool schema): 20 rows per page by default, at most 100."""
    default = await query(clients["carol"], model="PortfolioItem", where={"kind": KIND})
    assert len(default["rows"]) == 20 and default["next_cursor"] is not None
    everything = await query(clients["carol"], model="PortfolioItem", take=100)
    assert len(everything["rows"]) == len(probes) + 2 and everything["next_cursor"] is None
    assert (
        structured(await clients["carol"].call_tool("count_records", {"model": "PortfolioItem"}))["count"]
        == 47
    )


# -- keyset pagination -------------------------------------------------------------------------------

ORDERS = [
    pytest.param([], "id ASC", id="default-id"),
    pytest.param([{"id": "desc"}], "id DESC", id="id-desc"),
    pytest.param([{"created_at": "desc"}], "created_at DESC, id ASC", id="created-desc-ties"),
    pytest.param([{"description": "asc"}], "description ASC NULLS LAST, id ASC", id="nullable-asc"),
    pytest.param([{"description": "desc"}], "description DESC NULLS FIRST, id ASC", id="nullable-desc"),
    pytest.param(
        [{"url": "asc"}, {"created_at": "desc"}],
        "url ASC NULLS LAST, created_at DESC, id ASC",
        id="nullable-then-timestamp",
    ),
    pytest.param(
        [{"is_watched": "desc"}, {"description": "asc"}, {"id": "desc"}],
        "is_watched DESC, description ASC NULLS LAST, id DESC",
        id="boolean-nullable-id-desc",
    ),
    pytest.param([{"title": "asc"}], "title ASC, id ASC", id="text-with-specials"),
    pytest.param([{"is_watched": "asc"}], "is_watched ASC, id ASC", id="boolean-asc"),
]


@pytest.mark.parametrize(("order_by", "sql_order"), ORDERS)
async def test_cursor_pagination_walks_every_row_exactly_once_in_order(
    clients: dict[str, Client], admin: sa.Engine, probes: list[Any], order_by: list[Any], sql_order: str
) -> None:
    """Our choice (keyset cursors): pages of 10 cover all 45 rows once, in the database's order."""
    with admin.connect() as conn:
        expected = list(
            conn.execute(
                sa.text(
                    f"SELECT id FROM portfolio_items WHERE user_id = :u AND kind = :k ORDER BY {sql_order}"
                ),
                {"u": CAROL, "k": KIND},
            ).scalars()
        )
    walked: list[uuid.UUID] = []
    cursor: str | None = None
    pages = 0
    while True:
        args: dict[str, Any] = {
            "model": "PortfolioItem",
            "where": {"kind": KIND},
            "take": 10,
            "select": ["id"],
        }
        if order_by:
            args["order_by"] = order_by
        if cursor:
            args["cursor"] = cursor
        page = await query(clients["carol"], **args)
        walked += ids(page["rows"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10
    assert pages == 5
    assert len(walked) == len(set(walked)) == 45
    assert walked == expected


# -- operators ---------------------------------------------------------------------------------------

Pred = Callable[[dict[str, Any]], bool]


def _iso(minutes: int) -> str:
    return (BASE + dt.timedelta(minutes=minutes)).isoformat()


OPERATORS: list[Any] = [
    pytest.param({"title": "Alpha 00"}, lambda p: p["title"] == "Alpha 00", id="shorthand-equals"),
    pytest.param({"title": {"equals": "beta 01"}}, lambda p: p["title"] == "beta 01", id="equals"),
    pytest.param({"description": None}, lambda p: p["description"] is None, id="equals-null"),
    pytest.param({"description": {"equals": None}}, lambda p: p["description"] is None, id="equals-null-op"),
    # `not: value` keeps NULLs (our choice: "not x" reads as "anything but x").
    pytest.param(
        {"description": {"not": "desc 1"}}, lambda p: p["description"] != "desc 1", id="not-value-keeps-nulls"
    ),
    pytest.param({"description": {"not": None}}, lambda p: p["description"] is not None, id="not-null"),
    pytest.param(
        {"description": {"not": {"equals": "desc 1"}}},
        lambda p: p["description"] is not None and p["description"] != "desc 1",
        id="not-nested-filter",
    ),
    pytest.param(
        {"description": {"in": ["desc 1", "desc 2"]}},
        lambda p: p["description"] in ("desc 1", "desc 2"),
        id="in",
    ),
    pytest.param(
        {"description": {"in": ["desc 1", None]}},
        lambda p: p["description"] in ("desc 1", None),
        id="in-with-null",
    ),
    pytest.param({"description": {"in": []}}, lambda p: False, id="in-empty"),
    pytest.param(
        {"description": {"notIn": ["desc 1", "desc 2"]}},
        lambda p: p["description"] is not None and p["description"] not in ("desc 1", "desc 2"),
        id="not-in-drops-nulls",
    ),
    pytest.param(
        {"description": {"notIn": ["desc 1", None]}},
        lambda p: p["description"] not in ("desc 1", None),
        id="not-in-with-null",
    ),
    pytest.param({"description": {"notIn": []}}, lambda p: True, id="not-in-empty"),
    pytest.param(
        {"created_at": {"lt": _iso(3)}}, lambda p: p["created_at"] < BASE + dt.timedelta(minutes=3), id="lt"
    ),
    pytest.param(
        {"created_at": {"lte": _iso(3)}},
        lambda p: p["created_at"] <= BASE + dt.timedelta(minutes=3),
        id="lte",
    ),
    pytest.param(
        {"created_at": {"gt": _iso(12)}}, lambda p: p["created_at"] > BASE + dt.timedelta(minutes=12), id="gt"
    ),
    pytest.param(
        {"created_at": {"gte": _iso(12), "lt": _iso(14)}},
        lambda p: BASE + dt.timedelta(minutes=12) <= p["created_at"] < BASE + dt.timedelta(minutes=14),
        id="gte-and-lt-range",
    ),
    pytest.param(
        {"created_at": {"gte": "2025-01-01T00:05:00Z"}},
        lambda p: p["created_at"] >= BASE + dt.timedelta(minutes=5),
        id="timestamp-with-z",
    ),
    pytest.param({"title": {"lt": "Alpha 07"}, "kind": KIND}, None, id="text-lt-runs"),
    pytest.param({"is_watched": True}, lambda p: p["is_watched"], id="boolean"),
    pytest.param({"is_watched": {"gt": False}}, lambda p: p["is_watched"], id="boolean-gt"),
    pytest.param({"is_watched": {"lte": False}}, lambda p: not p["is_watched"], id="boolean-lte"),
    pytest.param({"is_watched": {"not": True}}, lambda p: not p["is_watched"], id="boolean-not"),
    pytest.param({"title": {"contains": "% off"}}, lambda p: "% off" in p["title"], id="contains-percent"),
    pytest.param({"title": {"contains": "_"}}, lambda p: "_" in p["title"], id="contains-underscore"),
    pytest.param({"title": {"contains": "\\"}}, lambda p: "\\" in p["title"], id="contains-backslash"),
    pytest.param({"title": {"contains": "'"}}, lambda p: "'" in p["title"], id="contains-quote"),
    pytest.param(
        {"title": {"contains": "alpha"}}, lambda p: "alpha" in p["title"], id="contains-case-sensitive"
    ),
    pytest.param(
        {"title": {"contains": "alpha", "mode": "insensitive"}},
        lambda p: "alpha" in p["title"].lower(),
        id="contains-insensitive",
    ),
    pytest.param(
        {"title": {"startsWith": "GAMMA"}}, lambda p: p["title"].startswith("GAMMA"), id="starts-with"
    ),
    pytest.param(
        {"title": {"startsWith": "gamma", "mode": "insensitive"}},
        lambda p: p["title"].lower().startswith("gamma"),
        id="starts-with-insensitive",
    ),
    pytest.param(
        {"title": {"startsWith": "50%"}}, lambda p: p["title"].startswith("50%"), id="starts-with-percent"
    ),
    pytest.param({"title": {"endsWith": "07"}}, lambda p: p["title"].endswith("07"), id="ends-with"),
    pytest.param({"title": {"endsWith": "_"}}, lambda p: False, id="ends-with-underscore-literal"),
    pytest.param(
        {"title": {"equals": "alpha 00", "mode": "insensitive"}},
        lambda p: p["title"].lower() == "alpha 00",
        id="equals-insensitive",
    ),
    pytest.param(
        {"title": {"in": ["ALPHA 00", "beta 01"], "mode": "insensitive"}},
        lambda p: p["title"].lower() in ("alpha 00", "beta 01"),
        id="in-insensitive",
    ),
    pytest.param(
        {"AND": [{"is_watched": True}, {"url": {"not": None}}]},
        lambda p: p["is_watched"] and p["url"] is not None,
        id="and-list",
    ),
    pytest.param({"AND": {"is_watched": True}}, lambda p: p["is_watched"], id="and-object"),
    pytest.param(
        {"OR": [{"title": {"startsWith": "Alpha"}}, {"description": None}]},
        lambda p: p["title"].startswith("Alpha") or p["description"] is None,
        id="or",
    ),
    pytest.param({"NOT": {"is_watched": True}}, lambda p: not p["is_watched"], id="not-object"),
    pytest.param(
        {"NOT": [{"is_watched": True}, {"url": None}]},
        lambda p: not (p["is_watched"] and p["url"] is None),
        id="not-list",
    ),
    pytest.param(
        {
            "OR": [
                {"AND": [{"is_watched": True}, {"NOT": {"description": None}}]},
                {"title": {"endsWith": "44"}},
            ]
        },
        lambda p: (p["is_watched"] and p["description"] is not None) or p["title"].endswith("44"),
        id="nested-and-or-not",
    ),
    pytest.param({"AND": []}, lambda p: True, id="and-empty"),
]


@pytest.mark.parametrize(("where", "predicate"), OPERATORS)
async def test_each_operator_selects_exactly_the_matching_rows(
    clients: dict[str, Client], probes: list[dict[str, Any]], where: dict[str, Any], predicate: Pred | None
) -> None:
    """Our choice (Prisma's where grammar, db/filters.py): results match the operator's meaning."""
    client = clients["carol"]
    scoped = {"AND": [{"kind": KIND}, where]}
    rows = (await query(client, model="PortfolioItem", where=scoped, select=["id"], take=100))["rows"]
    counted = structured(await client.call_tool("count_records", {"model": "PortfolioItem", "where": scoped}))
    if predicate is None:  # only checks that the comparison runs and agrees with count
        assert counted["count"] == len(rows)
        return
    expected = {p["id"] for p in probes if predicate(p)}
    assert set(ids(rows)) == expected
    assert counted["count"] == len(expected)


# -- bad input: a clear tool error, never database text ----------------------------------------------


def _cursor(order: Any, values: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": order, "v": values}).encode()).decode()


PI = "PortfolioItem"
BAD_INPUT = [
    pytest.param({"model": "ApiKey"}, ["ApiKey", "PortfolioItem"], id="unknown-model"),
    pytest.param({"model": "portfolioitem"}, ["PortfolioItem"], id="model-name-is-case-sensitive"),
    pytest.param({"model": PI, "where": {"nope": 1}}, ["nope", "title"], id="unknown-field"),
    pytest.param(
        {"model": PI, "where": {"user_id": str(CAROL)}}, ["user_id", "title"], id="field-outside-allowlist"
    ),
    pytest.param({"model": "UserProfile", "where": {"key_hash": "x"}}, ["key_hash", "email"], id="key-hash"),
    pytest.param(
        {"model": "Spark", "where": {"system_prompt": "x"}}, ["system_prompt"], id="hidden-spark-column"
    ),
    pytest.param({"model": PI, "select": ["user_id"]}, ["user_id", "title"], id="select-outside-allowlist"),
    pytest.param(
        {"model": PI, "order_by": [{"user_id": "asc"}]}, ["user_id", "title"], id="order-outside-allowlist"
    ),
    pytest.param({"model": PI, "order_by": [{"title": "up"}]}, ["order_by"], id="bad-direction"),
    pytest.param(
        {"model": PI, "order_by": [{"title": "asc", "url": "asc"}]}, ["order_by"], id="two-keys-in-one-order"
    ),
    pytest.param(
        {"model": PI, "where": {"title": {"like": "x"}}}, ["like", "contains"], id="unknown-operator"
    ),
    pytest.param({"model": PI, "where": {"title": {"mode": "fuzzy"}}}, ["insensitive"], id="unknown-mode"),
    pytest.param(
        {"model": PI, "where": {"is_watched": {"equals": True, "mode": "insensitive"}}},
        ["is_watched", "text"],
        id="insensitive-on-boolean",
    ),
    pytest.param({"model": PI, "where": {"id": "not-a-uuid"}}, ["id", "uuid"], id="malformed-uuid"),
    pytest.param({"model": PI, "where": {"id": {"in": ["x"]}}}, ["uuid"], id="malformed-uuid-in-list"),
    pytest.param(
        {"model": PI, "where": {"is_watched": "true"}}, ["is_watched", "boolean"], id="string-for-boolean"
    ),
    pytest.param(
        {"model": PI, "where": {"is_watched": 1}}, ["is_watched", "boolean"], id="number-for-boolean"
    ),
    pytest.param({"model": PI, "where": {"title": 5}}, ["title", "text"], id="number-for-text"),
    pytest.param(
        {"model": PI, "where": {"created_at": "yesterday"}}, ["created_at", "ISO 8601"], id="bad-timestamp"
    ),
    pytest.param(
        {"model": PI, "where": {"created_at": {"contains": "2025"}}}, ["text"], id="contains-on-timestamp"
    ),
    pytest.param({"model": PI, "where": {"title": {"lt": None}}}, ["null"], id="lt-null"),
    pytest.param({"model": PI, "where": {"title": {"in": "x"}}}, ["list"], id="in-not-a-list"),
    pytest.param({"model": PI, "where": {"title": {"in": ["x"] * 101}}}, ["100"], id="in-too-long"),
    pytest.param({"model": PI, "where": {"title": "x" * 1001}}, ["1000"], id="text-too-long"),
    pytest.param({"model": PI, "where": {"title": "a\x00b"}}, ["NUL"], id="text-with-nul"),
    pytest.param({"model": PI, "where": {"OR": {"title": "x"}}}, ["OR", "list"], id="or-not-a-list"),
    pytest.param({"model": PI, "where": {"OR": []}}, ["OR"], id="or-empty"),
    pytest.param({"model": PI, "where": {"AND": ["x"]}}, ["filter"], id="and-of-strings"),
    pytest.param(
        {
            "model": PI,
            "where": {
                "NOT": {"NOT": {"NOT": {"NOT": {"NOT": {"NOT": {"NOT": {"NOT": {"NOT": {"title": "x"}}}}}}}}}
            },
        },
        ["8"],
        id="too-deep",
    ),
    pytest.param(
        {"model": PI, "where": {"OR": [{"title": str(i)} for i in range(65)]}},
        ["64"],
        id="too-many-conditions",
    ),
    pytest.param({"model": PI, "take": 0}, ["take"], id="take-zero"),
    pytest.param({"model": PI, "take": 101}, ["take"], id="take-over-100"),
    pytest.param({"model": PI, "cursor": "garbage!!"}, ["cursor"], id="cursor-garbage"),
    pytest.param(
        {"model": PI, "cursor": base64.urlsafe_b64encode(b"[1,2]").decode()},
        ["cursor"],
        id="cursor-json-list",
    ),
    pytest.param(
        {"model": PI, "cursor": _cursor([["id", "asc"]], [])}, ["cursor"], id="cursor-length-mismatch"
    ),
    pytest.param({"model": PI, "cursor": _cursor([["id", "asc"]], ["x"])}, ["uuid"], id="cursor-bad-value"),
    pytest.param({"model": PI, "cursor": _cursor([["id", "asc"]], [[1]])}, ["uuid"], id="cursor-list-value"),
    pytest.param(
        {
            "model": PI,
            "order_by": [{"title": "asc"}],
            "cursor": _cursor([["id", "asc"]], [str(uuid.uuid4())]),
        },
        ["order_by"],
        id="cursor-from-another-order",
    ),
    pytest.param(
        {"model": PI, "cursor": _cursor([["user_id", "asc"]], [str(CAROL)])},
        ["order_by"],
        id="cursor-naming-a-hidden-column",
    ),
]

LEAKS = ("psycopg", "sqlalchemy", "sqlstate", "traceback", "portfolio_items", "pg_")


@pytest.mark.parametrize(("args", "mentions"), BAD_INPUT)
async def test_bad_input_is_a_tool_error_that_says_what_is_allowed_and_leaks_no_database_text(
    clients: dict[str, Client], args: dict[str, Any], mentions: list[str]
) -> None:
    """Our choice (STYLE "errors ... a message written for the model"): is_error, helpful, no SQL."""
    text = error_text(await clients["carol"].call_tool("query_records", args))
    for word in mentions:
        assert word in text, (word, text)
    assert "SELECT" not in text
    assert not any(leak in text.lower() for leak in LEAKS), text
    if "take" not in args and "cursor" not in args and "select" not in args and "order_by" not in args:
        counted = await clients["carol"].call_tool("count_records", {k: v for k, v in args.items()})
        assert counted.is_error
