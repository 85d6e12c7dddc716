"""The scoping policy file: the bundled one loads, custom ones compile against the real schema, and
invalid ones fail on load or on start with a PolicyError that says where the problem is."""

from __future__ import annotations

import textwrap
import tomllib
import uuid
from pathlib import Path

import pgvector.sqlalchemy  # noqa: F401  (teaches reflection the vector type)
import pytest
import sqlalchemy as sa
from mcp.client import Client

from rowscope.db.policy import CompiledPolicy, PolicyError, PolicyFile, load_policy
from rowscope.server import demo
from rowscope.server.app import build_mcp, build_runtime
from rowscope.server.settings import Settings
from tests.conftest import USERS, error_text, structured

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def metadata(admin: sa.Engine) -> sa.MetaData:
    """The whole schema, reflected the way the runtime reflects the policy's tables."""
    reflected = sa.MetaData()
    reflected.reflect(admin)
    return reflected


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(textwrap.dedent(body), "utf-8")
    return path


def test_the_bundled_spark_policy_loads_and_compiles(metadata: sa.MetaData) -> None:
    """Our choice (ARCHITECTURE "the Spark policy ships as the default")."""
    policy = load_policy()
    assert set(policy.models) == {"UserProfile", "PortfolioItem", "ChatSession", "ChatMessage", "Spark"}
    assert policy.knowledge is not None and policy.knowledge.access == "spark"
    compiled = CompiledPolicy(policy, metadata)
    assert "user_id" not in compiled.models["PortfolioItem"].columns
    assert "system_prompt" not in compiled.models["Spark"].columns


CUSTOM = """
    version = 1

    # Sparks readable by owner or member; no team sharing in this application.
    [access.persona]
    table = "sparks"
    read = { any = [
      { owner = "user_id" },
      { member = { table = "spark_members", key = "spark_id" } },
    ] }
    write = { owner = "user_id" }

    [models.Item]
    table = "portfolio_items"
    columns = ["id", "title"]
    scope = { owner = "user_id" }

    [models.Session]
    table = "chat_sessions"
    columns = ["id", "title"]
    scope = { owner = "user_id" }

    [models.Message]
    table = "chat_messages"
    columns = ["id", "content"]
    scope = { parent = { column = "session_id", model = "Session" } }

    [models.Chunk]
    table = "spark_embeddings"
    columns = ["id", "content"]
    scope = { parent = { column = "spark_id", access = "persona" } }

    [models.OwnPersona]
    table = "sparks"
    columns = ["id", "name"]
    scope = { all = [{ access = "persona" }, { owner = "user_id" }] }
"""

# What each custom model must select for bob, in plain SQL.
CUSTOM_EXPECTED = {
    "Item": "SELECT id FROM portfolio_items WHERE user_id = :uid",
    "Session": "SELECT id FROM chat_sessions WHERE user_id = :uid",
    "Message": (
        "SELECT m.id FROM chat_messages m JOIN chat_sessions s ON s.id = m.session_id WHERE s.user_id = :uid"
    ),
    "Chunk": (
        "SELECT id FROM spark_embeddings WHERE spark_id IN (SELECT id FROM sparks WHERE user_id = :uid"
        " UNION SELECT spark_id FROM spark_members WHERE user_id = :uid)"
    ),
    "OwnPersona": "SELECT id FROM sparks WHERE user_id = :uid",
}


@pytest.mark.parametrize("model", list(CUSTOM_EXPECTED))
def test_a_custom_policy_with_owner_parent_and_access_rules_compiles_to_the_stated_rows(
    tmp_path: Path, metadata: sa.MetaData, admin: sa.Engine, model: str
) -> None:
    """Our choice (policy grammar in rowscope/db/policy.py): each rule kind selects what it says."""
    compiled = CompiledPolicy(load_policy(write(tmp_path, CUSTOM)), metadata)
    table = compiled.models[model].table
    with admin.connect() as conn:
        got = set(
            conn.execute(sa.select(table.c.id).where(compiled.model_scope(model, str(demo.BOB)))).scalars()
        )
        want = set(conn.execute(sa.text(CUSTOM_EXPECTED[model]), {"uid": demo.BOB}).scalars())
    assert got == want
    assert got, "bob has rows of every custom model in the demo"


def test_a_custom_access_rule_without_team_sharing_hides_the_team_spark(
    tmp_path: Path, metadata: sa.MetaData, admin: sa.Engine
) -> None:
    """Our choice: access rules are the application's, not hard-wired to the seed."""
    compiled = CompiledPolicy(load_policy(write(tmp_path, CUSTOM)), metadata)
    with admin.connect() as conn:
        names = set(
            conn.execute(
                sa.select(sa.column("name"))
                .select_from(sa.table("sparks"))
                .where(sa.column("id").in_(compiled.access_ids("persona", "read", str(demo.BOB))))
            ).scalars()
        )
    assert names == {"Bob's Research Assistant", "Bob's Private Journal", "Carol's Garden Planner"}


BASE_MODEL = """
    [models.Item]
    table = "portfolio_items"
    columns = ["id", "title"]
    scope = { owner = "user_id" }
"""

INVALID_ON_LOAD = [
    pytest.param(
        'version = 1\n[models.Item]\ntable = "portfolio_items"\ncolumns = ["id"]\n'
        'scope = { access = "nope" }\n',
        "unknown access rule",
        id="unknown-access-rule",
    ),
    pytest.param(
        "version = 1\n"
        '[models.A]\ntable = "chat_sessions"\ncolumns = ["id"]\n'
        'scope = { parent = { column = "id", model = "B" } }\n'
        '[models.B]\ntable = "chat_messages"\ncolumns = ["id"]\n'
        'scope = { parent = { column = "session_id", model = "A" } }\n',
        "loops",
        id="parent-loop",
    ),
    pytest.param(
        'version = 1\n[models.A]\ntable = "chat_sessions"\ncolumns = ["id"]\n'
        'scope = { parent = { column = "id", model = "Nope" } }\n',
        "unknown parent model",
        id="unknown-parent-model",
    ),
    pytest.param(
        'version = 1\n[access.x]\ntable = "sparks"\nread = { access = "x" }\nwrite = { owner = "user_id" }\n'
        + BASE_MODEL,
        "refers back to itself",
        id="access-rule-refers-to-itself",
    ),
    pytest.param(
        'version = 1\n[access.x]\ntable = "sparks"\nread = { any = [{ owner = "user_id" },'
        ' { parent = { column = "id", access = "x" } }] }\nwrite = { owner = "user_id" }\n' + BASE_MODEL,
        "refers back to itself",
        id="access-rule-parent-of-itself",
    ),
    pytest.param(
        "version = 1\n"
        '[access.x]\ntable = "sparks"\nread = { parent = { column = "id", model = "S" } }\n'
        'write = { owner = "user_id" }\n'
        '[models.S]\ntable = "sparks"\ncolumns = ["id"]\nscope = { access = "x" }\n',
        "itself",
        id="loop-through-model-and-access-rule",
    ),
    pytest.param("version = 1\nsurprise = true\n" + BASE_MODEL, "surprise", id="unknown-top-level-key"),
    pytest.param(
        'version = 1\n[models.Item]\ntable = "portfolio_items"\ncolums = ["id"]\n'
        'scope = { owner = "user_id" }\n',
        "colums",
        id="misspelt-model-key",
    ),
    pytest.param(
        'version = 1\n[models.Item]\ntable = "portfolio_items"\ncolumns = ["id"]\n'
        'scope = { owns = "user_id" }\n',
        "scope",
        id="unknown-rule-kind",
    ),
    pytest.param(
        'version = 1\n[models.Item]\ntable = "portfolio_items"\ncolumns = ["title"]\n'
        'scope = { owner = "user_id" }\n',
        "primary key",
        id="primary-key-not-in-columns",
    ),
    pytest.param(
        'version = 1\n[models.Item]\ntable = "portfolio_items; drop table x"\ncolumns = ["id"]\n'
        'scope = { owner = "user_id" }\n',
        "table",
        id="table-name-not-an-identifier",
    ),
    pytest.param(
        'version = 1\n[models.A]\ntable = "chat_messages"\ncolumns = ["id"]\n'
        'scope = { parent = { column = "session_id", model = "A", access = "x" } }\n',
        "exactly one",
        id="parent-with-model-and-access",
    ),
    pytest.param("version = 2\n" + BASE_MODEL, "version", id="unknown-version"),
    pytest.param("version = 1\n", "models", id="no-models"),
    pytest.param("version = 1\n[models.Item\n", "not a valid rowscope policy", id="toml-syntax-error"),
]


@pytest.mark.parametrize(("body", "mentions"), INVALID_ON_LOAD)
def test_an_invalid_policy_fails_to_load_with_a_policy_error_saying_where(
    tmp_path: Path, body: str, mentions: str
) -> None:
    """Our choice (ARCHITECTURE "validated with pydantic"): a bad policy never starts a server."""
    path = write(tmp_path, body)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert mentions in str(caught.value)
    assert str(path) in str(caught.value)


def test_a_missing_policy_file_is_a_policy_error(tmp_path: Path) -> None:
    """Our choice: an unreadable file is reported as a policy problem, not a traceback."""
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "absent.toml")


def model_policy(table: str, columns: str, scope: str, extra: str = "") -> PolicyFile:
    return PolicyFile.model_validate(
        tomllib.loads(
            f'version = 1\n{extra}\n[models.M]\ntable = "{table}"\ncolumns = {columns}\nscope = {scope}\n'
        )
    )


INVALID_ON_COMPILE = [
    pytest.param("no_such_table", '["id"]', '{ owner = "user_id" }', "", "no_such_table", id="missing-table"),
    pytest.param(
        "portfolio_items", '["id", "nope"]', '{ owner = "user_id" }', "", "nope", id="missing-column"
    ),
    pytest.param(
        "portfolio_items", '["id"]', '{ owner = "owner_id" }', "", "owner_id", id="missing-owner-column"
    ),
    pytest.param(
        "portfolio_items",
        '["id"]',
        '{ all = [{ flag = "is_public" }] }',
        "",
        "is_public",
        id="missing-flag-column",
    ),
    pytest.param(
        "chat_messages",
        '["id"]',
        '{ member = { table = "spark_members", key = "spark_id", on = "spark_ref" } }',
        "",
        "spark_ref",
        id="missing-member-on-column",
    ),
    pytest.param(
        "chat_messages",
        '["id"]',
        '{ member = { table = "spark_members", key = "spark_key" } }',
        "",
        "spark_key",
        id="missing-member-key-column",
    ),
    pytest.param(
        "chat_messages",
        '["id"]',
        '{ parent = { column = "sess_id", access = "a" } }',
        '[access.a]\ntable = "chat_sessions"\nread = { owner = "user_id" }\nwrite = { owner = "user_id" }',
        "sess_id",
        id="missing-parent-column",
    ),
    pytest.param(
        "chat_messages",
        '["id"]',
        '{ parent = { column = "session_id", access = "a", references = "uuid" } }',
        '[access.a]\ntable = "chat_sessions"\nread = { owner = "user_id" }\nwrite = { owner = "user_id" }',
        "uuid",
        id="missing-parent-references-column",
    ),
    pytest.param(
        "portfolio_items",
        '["id"]',
        '{ access = "a" }',
        '[access.a]\ntable = "sparks"\nread = { flag = "is_shared_with_team" }\n'
        'write = { owner = "user_id" }',
        "is_shared_with_team",
        id="access-rule-applied-to-a-table-without-its-columns",
    ),
    pytest.param(
        "portfolio_items",
        '["id"]',
        '{ owner = "user_id" }',
        '[access.a]\ntable = "sparks"\nkey = "spark_id"\nread = { owner = "user_id" }\n'
        'write = { owner = "user_id" }',
        "spark_id",
        id="missing-access-key-column",
    ),
]


@pytest.mark.parametrize(("table", "columns", "scope", "extra", "mentions"), INVALID_ON_COMPILE)
def test_a_policy_that_does_not_match_the_database_fails_to_compile_with_a_policy_error(
    metadata: sa.MetaData, table: str, columns: str, scope: str, extra: str, mentions: str
) -> None:
    """Our choice: a policy naming tables or columns the database lacks fails on start, never on
    the first query (where it would surface as a generic refusal)."""
    with pytest.raises(PolicyError) as caught:
        CompiledPolicy(model_policy(table, columns, scope, extra), metadata)
    assert mentions in str(caught.value)


async def test_starting_a_runtime_with_a_policy_naming_a_missing_table_is_a_policy_error(
    tmp_path: Path, database_url: str
) -> None:
    """Our choice: the operator sees which table the policy names that the database lacks."""
    path = write(
        tmp_path,
        'version = 1\n[models.M]\ntable = "no_such_table"\ncolumns = ["id"]\nscope = { owner = "u" }\n',
    )
    settings = Settings(database_url=database_url, data_dir=tmp_path, policy=path, openai_api_key=None)
    runtime = build_runtime(settings, database_url)
    try:
        with pytest.raises(PolicyError, match="no_such_table"):
            await runtime.start()
    finally:
        await runtime.close()


ONLY_PORTFOLIO = """
    version = 1

    [models.PortfolioItem]
    table = "portfolio_items"
    description = "Only portfolio items."
    columns = ["id", "title"]
    scope = { owner = "user_id" }
"""


async def test_settings_policy_is_honoured_by_the_runtime_and_the_tools(
    tmp_path: Path, database_url: str
) -> None:
    """Our choice (Settings.policy / ROWSCOPE_POLICY): the configured policy replaces the bundled one."""
    path = write(tmp_path, ONLY_PORTFOLIO)
    settings = Settings(database_url=database_url, data_dir=tmp_path, policy=path, openai_api_key=None)
    async with Client(build_mcp(build_runtime(settings, database_url, stdio_user=USERS["carol"]))) as client:
        rows = structured(await client.call_tool("query_records", {"model": "PortfolioItem"}))["rows"]
        refused = error_text(await client.call_tool("query_records", {"model": "ChatSession"}))
        described = {t.name: t.description or "" for t in (await client.list_tools()).tools}
    assert rows and all(set(r) == {"id", "title"} for r in rows)
    assert "ChatSession" in refused and "PortfolioItem" in refused
    assert "ChatSession" not in described["query_records"]


def test_the_rowscope_policy_environment_variable_sets_the_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our choice (Settings, env prefix ROWSCOPE_): ROWSCOPE_POLICY names the policy file."""
    path = write(tmp_path, ONLY_PORTFOLIO)
    monkeypatch.setenv("ROWSCOPE_POLICY", str(path))
    settings = Settings(openai_api_key=None)
    assert settings.policy == path
    assert set(load_policy(settings.policy).models) == {"PortfolioItem"}


def test_a_compiled_scope_binds_the_user_id_as_a_parameter(metadata: sa.MetaData) -> None:
    """Our choice (ARCHITECTURE lock 1): the user id is a bound value, never SQL text."""
    compiled = CompiledPolicy(load_policy(), metadata)
    user = uuid.uuid4()
    clause = compiled.model_scope("Spark", str(user)).compile(
        dialect=sa.create_engine("postgresql+psycopg://").dialect
    )
    assert str(user) not in str(clause)
    assert str(user) in clause.params.values()


@pytest.mark.parametrize(("body", "mentions"), INVALID_ON_LOAD)
def test_every_invalid_policy_is_one_line(tmp_path: Path, body: str, mentions: str) -> None:
    """Issue 12: an operator reads one line, not pydantic's error per member of the rule union."""
    path = write(tmp_path, body)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert "\n" not in str(caught.value)


MISTYPED = [
    pytest.param(
        'scope = { ownr = "user_id" }',
        "models.Item.scope: unknown rule 'ownr'; "
        "rules: owner, flag, unset, member, parent, access, role, public, any, all",
        id="rule",
    ),
    pytest.param(
        'scope = { any = [{ owner = "user_id" }, { membr = { table = "t", key = "k" } }] }',
        "models.Item.scope.any[1]: unknown rule 'membr'; rules: owner, flag, unset, member",
        id="rule-in-any",
    ),
    pytest.param(
        'scope = { member = { tabel = "spark_members", key = "spark_id" } }',
        "models.Item.scope.member: unknown key 'tabel'; allowed: table, key, on, user, where",
        id="member-key",
    ),
    pytest.param(
        'scope = { owner = "user_id", flag = "is_watched" }',
        "models.Item.scope: a rule has exactly one key, not 2 ('owner', 'flag')",
        id="two-rules-in-one",
    ),
    pytest.param(
        'scope = "user_id"',
        "models.Item.scope: a rule is a table such as { owner = \"user_id\" }, not 'user_id'",
        id="rule-not-a-table",
    ),
    pytest.param(
        'scope = { owner = "user_id" }\nprimary_kye = "id"',
        "models.Item: unknown key 'primary_kye'; allowed: table, columns, primary_key, scope, description",
        id="model-key",
    ),
]


@pytest.mark.parametrize(("scope", "says"), MISTYPED)
def test_a_mistyped_policy_names_the_key_and_what_is_allowed_there(
    tmp_path: Path, scope: str, says: str
) -> None:
    """Issue 12: the most specific error, with the allowed keys or rules (a rule typo was 52 errors
    that named none of them)."""
    path = write(
        tmp_path, f'version = 1\n[models.Item]\ntable = "portfolio_items"\ncolumns = ["id"]\n{scope}\n'
    )
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(caught.value).startswith(f"the policy file {path}: {says}")


def test_a_mistyped_knowledge_key_lists_the_knowledge_keys(tmp_path: Path) -> None:
    """Issue 12: a typo in [knowledge] is one line listing the keys [knowledge] takes."""
    spark = (Path(__file__).resolve().parents[1] / "rowscope/policies/spark.toml").read_text()
    path = write(tmp_path, spark.replace("parent_column =", "parent_colum ="))
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    message = str(caught.value)
    assert message.startswith(f"the policy file {path}: knowledge: unknown key 'parent_colum'; allowed: ")
    assert "parent_column" in message and "\n" not in message
