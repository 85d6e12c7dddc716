"""The examples (examples/<seed>/, issue 11) load as a developer would load them: rowscope's own
migrations, then the application's schema.sql and demo.sql with psql's rights, then the policy
compiles against the tables and every model's demo rows belong to the users the README says.

The isolation of each example (both locks, every tool) is tested elsewhere; this is the check that
the files themselves are consistent with each other and with the grammar."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import func, select

from rowscope.db import migrate
from rowscope.db.engine import Database, DatabaseUrl
from rowscope.db.policy import PublicRule, RoleRule, load_policy
from rowscope.server.runtime import compile_policy

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@dataclass(frozen=True)
class Example:
    directory: str
    # The demo users' subjects (the application's ids for alice and bob).
    alice: str
    bob: str


CASES = [
    pytest.param(Example("001-tzurot", "111111111111111111", "222222222222222222"), id="001-tzurot"),
    pytest.param(Example("002-arrakis", "alice-account", "bob-account"), id="002-arrakis"),
    pytest.param(Example("003-agent-os", "user-alice", "user-bob"), id="003-agent-os"),
    pytest.param(
        Example(
            "004-ops-tools",
            "11111111-1111-4111-8111-111111111111",
            "22222222-2222-4222-8222-222222222222",
        ),
        id="004-ops-tools",
    ),
]


def load_example(pg_admin: Callable[[str], str], example: Example) -> str:
    """A new database with rowscope's tables and the example's schema and demo rows."""
    url = pg_admin(f"rowscope_example_{secrets.token_hex(4)}")
    migrate.upgrade(url)
    directory = EXAMPLES / example.directory
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        for name in ("schema.sql", "demo.sql"):
            conn.execute((directory / name).read_text("utf-8"))
    return url


@pytest.mark.parametrize("example", CASES)
async def test_an_example_loads_and_its_policy_compiles(
    pg_admin: Callable[[str], str], example: Example
) -> None:
    """Our choice: each example's schema, demo rows and policy fit together (issue 11, item 4)."""
    url = load_example(pg_admin, example)
    policy = load_policy(EXAMPLES / example.directory / "policy.toml")
    database = Database(DatabaseUrl.parse(url))
    try:
        compiled = await compile_policy(database, policy)
        for name, spec in policy.models.items():
            assert set(spec.columns) <= set(compiled.models[name].table.c.keys()), name
        async with database.engine.connect() as conn:
            for name in policy.models:
                table = compiled.models[name].table
                seen: dict[str, int] = {}
                for user, subject in (("alice", example.alice), ("bob", example.bob)):
                    scoped = (
                        select(func.count()).select_from(table).where(compiled.model_scope(name, subject))
                    )
                    seen[user] = (await conn.execute(scoped)).scalar_one()
                assert all(seen.values()), f"{name}: a demo user has no rows: {seen}"
                total = (await conn.execute(select(func.count()).select_from(table))).scalar_one()
                # A scope that grants every row (002's public tables, 004's bonus windows) aside,
                # alice does not see everything: the demo has rows of someone else.
                shared = isinstance(policy.models[name].scope, PublicRule | RoleRule)
                assert shared or seen["alice"] < total, name
            knowledge = policy.knowledge
            assert knowledge is not None
            for subject in (example.alice, example.bob):
                for mode in ("read", "write"):
                    ids = compiled.access_ids(knowledge.access, mode, subject)
                    assert (await conn.execute(ids)).first() is not None, (subject, mode)
        # Every column the application requires on a chunk is one rowscope writes: its own, a filter
        # the assistant gives, or an on_insert value (a Prisma @updatedAt, Tzurot's channelId).
        required = {
            c.name for c in compiled.table(knowledge.table).c if not c.nullable and c.server_default is None
        }
        written = {knowledge.id_column, knowledge.parent_column, knowledge.text_column}
        written |= {knowledge.vector_column, *knowledge.filters.values(), *knowledge.on_insert}
        assert required <= written, sorted(required - written)
    finally:
        await database.dispose()
