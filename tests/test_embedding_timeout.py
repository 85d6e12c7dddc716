"""Issue 13: an embedding call is bounded in total time (``ROWSCOPE_EMBEDDING_TIMEOUT``, retries and
backoff included), a tool whose embedding runs out of time says so and adds nothing, and one user's
hanging embedding does not hold another user's search. The provider is the loopback fake OpenAI
server (tests/fake_openai.py), made to hang or to answer slowly."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
import sqlalchemy as sa
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from pydantic import SecretStr

from rowscope.embeddings import EmbeddingError, OfflineEmbedder, OpenAIEmbedder
from rowscope.server import demo
from rowscope.server.app import build_mcp, build_runtime
from rowscope.server.settings import Settings
from tests.conftest import USERS, error_text, structured
from tests.fake_openai import FakeOpenAI, Reply, serve_fake_openai
from tests.servers import serve

pytestmark = pytest.mark.anyio

ALICE_COACH = demo._id("spark-alice-coach")  # alice owns it
BOB_RESEARCH = demo._id("spark-bob-research")  # bob owns it
HANG = "HANG-ME"  # the fake never answers a request with this in an input
SLACK = 1.5  # seconds allowed past a bound on a loaded two-core machine


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with serve_fake_openai() as fake:
        fake.hang_marker = HANG
        yield fake


@pytest.fixture(scope="module")
def keys(make_api_key: Callable[..., str]) -> tuple[str, str]:
    """API keys of alice and bob (made with ``accounts.create_key``, deleted after the session)."""
    return make_api_key("alice@example.com", "issue 13 alice"), make_api_key(
        "bob@example.com", "issue 13 bob"
    )


def chunk_count(engine: sa.Engine, spark: uuid.UUID) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT count(*) FROM spark_embeddings WHERE spark_id = :s"), {"s": spark}
            ).scalar_one()
        )


def remote(settings: Settings, fake: FakeOpenAI, timeout: float) -> Settings:
    return settings.model_copy(
        update={
            "openai_api_key": SecretStr("sk-test"),
            "openai_base_url": fake.base_url,
            "embedding_timeout": timeout,
        }
    )


@asynccontextmanager
async def client_with(settings: Settings, database_url: str, user: uuid.UUID) -> AsyncIterator[Client]:
    server = build_mcp(build_runtime(settings, database_url, stdio_user=user))
    async with Client(server) as client:
        yield client


async def until_hanging(fake: FakeOpenAI, count: int, within: float) -> None:
    """Wait until ``count`` requests hang at the fake; fail if that takes ``within`` seconds."""
    assert await anyio.to_thread.run_sync(fake.wait_hanging, count, within), fake.hanging


# --- through the tools ------------------------------------------------------------------------------


async def test_a_hanging_provider_fails_add_training_content_within_the_bound_and_adds_nothing(
    settings: Settings, database_url: str, admin: sa.Engine, fake_openai: FakeOpenAI
) -> None:
    """Issue 13: a provider that never answers costs embedding_timeout, not ~195 s, and adds nothing."""
    before = chunk_count(admin, ALICE_COACH)
    async with client_with(remote(settings, fake_openai, 2), database_url, USERS["alice"]) as client:
        started = time.monotonic()
        with anyio.fail_after(2 + SLACK):
            result = await client.call_tool(
                "add_training_content", {"spark_id": str(ALICE_COACH), "content": f"notes {HANG} here"}
            )
        elapsed = time.monotonic() - started
    assert error_text(result).endswith(": embedding provider did not answer within 2 s")
    assert elapsed >= 2
    assert len(fake_openai.requests) == 1  # the one attempt had the whole budget; no retry began
    assert chunk_count(admin, ALICE_COACH) == before


async def test_a_hanging_provider_fails_search_knowledge_within_the_bound(
    settings: Settings, database_url: str, fake_openai: FakeOpenAI
) -> None:
    """Issue 13: a search whose query embedding hangs ends with a clear error within embedding_timeout."""
    async with client_with(remote(settings, fake_openai, 1), database_url, USERS["bob"]) as client:
        with anyio.fail_after(1 + SLACK):
            result = await client.call_tool("search_knowledge", {"query": f"where is {HANG}"})
    assert error_text(result).endswith(": embedding provider did not answer within 1 s")


@pytest.mark.slow
async def test_one_users_hanging_add_does_not_hold_another_users_search(
    database_url: str,
    tmp_path: Path,
    keys: tuple[str, str],
    fake_openai: FakeOpenAI,
) -> None:
    """Issue 13: bob's searches answer at once while alice's adds hang (more than the DB pool holds)."""
    alice, bob = keys
    bound = 4
    env = {
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": fake_openai.base_url,
        "ROWSCOPE_EMBEDDING_TIMEOUT": str(bound),
        # Two tool connections at most (pool_size + overflow): four hanging adds would starve bob's
        # search if an add held a connection while it embeds.
        "ROWSCOPE_POOL_SIZE": "1",
    }
    with serve(database_url, tmp_path, **env) as base_url:

        @asynccontextmanager
        async def mcp_client(key: str) -> AsyncIterator[Client]:
            headers = {"Authorization": f"Bearer {key}"}
            async with (
                httpx2.AsyncClient(headers=headers, timeout=60) as http,
                Client(streamable_http_client(f"{base_url}/mcp", http_client=http)) as client,
            ):
                yield client

        # A chunk the fake embeds as the spike at 1234, which bob's query "t1234" matches exactly.
        marker = "t1234"
        async with mcp_client(bob) as bob_client:
            added = structured(
                await bob_client.call_tool(
                    "add_training_content", {"spark_id": str(BOB_RESEARCH), "content": marker}
                )
            )
            try:
                failures: list[str] = []
                latencies: list[float] = []

                async def hanging_add(n: int) -> None:
                    async with mcp_client(alice) as alice_client:
                        result = await alice_client.call_tool(
                            "add_training_content",
                            {"spark_id": str(ALICE_COACH), "content": f"{HANG} {n} {uuid.uuid4()}"},
                        )
                        failures.append(error_text(result).split(": ", 1)[1])

                started = time.monotonic()
                async with anyio.create_task_group() as tasks:
                    for n in range(4):
                        tasks.start_soon(hanging_add, n)
                    await until_hanging(fake_openai, 4, within=bound / 4)  # all at once: none waits
                    for _ in range(5):
                        begun = time.monotonic()
                        with anyio.fail_after(bound / 2):
                            found = structured(
                                await bob_client.call_tool("search_knowledge", {"query": marker, "top_k": 1})
                            )
                        latencies.append(time.monotonic() - begun)
                        assert [h["source_id"] for h in found["hits"]] == [added["item_id"]]
                        assert found["hits"][0]["similarity"] == pytest.approx(1.0)
                    # All of it happened while alice's adds were still hanging.
                    assert (failures, fake_openai.hanging) == ([], 4)
                    assert time.monotonic() - started < bound
                elapsed = time.monotonic() - started
            finally:
                await bob_client.call_tool(
                    "remove_training_content", {"spark_id": str(BOB_RESEARCH), "item_id": added["item_id"]}
                )
    assert max(latencies) < 1.0, latencies  # measured: ~0.02 s each
    assert failures == [f"embedding provider did not answer within {bound} s"] * 4
    assert elapsed < bound + SLACK


# --- the OpenAI embedder itself ---------------------------------------------------------------------


async def test_the_bound_holds_across_retries_of_slow_server_errors(fake_openai: FakeOpenAI) -> None:
    """Issue 13: retries and backoff of slow 500s count against the one total bound, and end there."""
    fake_openai.script = [Reply(status=500, delay=0.8, headers={"retry-after-ms": "100"}) for _ in range(9)]
    embedder = OpenAIEmbedder(api_key="sk-test", base_url=fake_openai.base_url, max_retries=8, timeout=2)
    try:
        started = time.monotonic()
        with anyio.fail_after(2 + SLACK), pytest.raises(EmbeddingError) as caught:
            await embedder.embed(["t1"])
        elapsed = time.monotonic() - started
    finally:
        await embedder.aclose()
    assert str(caught.value).startswith("embedding provider did not answer within 2 s")
    assert elapsed >= 2
    assert 2 <= len(fake_openai.requests) <= 3  # ~0.9 s per failed attempt; nine were allowed


async def test_an_attempt_gets_no_more_than_the_remaining_budget(fake_openai: FakeOpenAI) -> None:
    """Issue 13: a 30 s per-attempt timeout does not let a hanging attempt outlive a 1 s bound."""
    embedder = OpenAIEmbedder(api_key="sk-test", base_url=fake_openai.base_url, attempt_timeout=30, timeout=1)
    try:
        with anyio.fail_after(1 + SLACK), pytest.raises(EmbeddingError, match="did not answer within 1 s"):
            await embedder.embed([f"t1 {HANG}"])
    finally:
        await embedder.aclose()
    assert len(fake_openai.requests) == 1


async def test_a_retry_that_cannot_finish_within_the_bound_is_not_started(fake_openai: FakeOpenAI) -> None:
    """Issue 13: a Retry-After longer than the time left ends the call at once, naming the status."""
    fake_openai.script = [Reply(status=429, headers={"retry-after": "60"})]
    embedder = OpenAIEmbedder(api_key="sk-test", base_url=fake_openai.base_url, timeout=20)
    try:
        with anyio.fail_after(SLACK), pytest.raises(EmbeddingError) as caught:
            await embedder.embed(["t1"])
    finally:
        await embedder.aclose()
    assert str(caught.value) == (
        "embedding provider rate limit or quota exceeded (429); "
        "no time left to retry within the 20 s embedding time limit"
    )
    assert len(fake_openai.requests) == 1


async def test_per_attempt_timeouts_are_retried_within_the_bound(fake_openai: FakeOpenAI) -> None:
    """Issue 13: an attempt that times out is retried while the total bound leaves time for it."""
    fake_openai.script = [Reply(delay=1.0), Reply()]
    embedder = OpenAIEmbedder(
        api_key="sk-test", base_url=fake_openai.base_url, attempt_timeout=0.3, timeout=10
    )
    try:
        with anyio.fail_after(3):
            (vector,) = await embedder.embed(["t7"])
    finally:
        await embedder.aclose()
    assert len(fake_openai.requests) == 2
    assert max(range(len(vector)), key=vector.__getitem__) == 7


# --- the offline embedder ---------------------------------------------------------------------------


async def test_the_offline_embedder_is_bounded_too() -> None:
    """Issue 13: the offline model runs in a worker thread; the caller stops waiting at the bound."""
    embedder = OfflineEmbedder(timeout=0.2)
    texts = [f"row {i} " + "column value " * 150 for i in range(64)]
    try:
        with anyio.fail_after(0.2 + SLACK), pytest.raises(EmbeddingError) as caught:
            await embedder.embed(texts)
    finally:
        await embedder.aclose()
    assert str(caught.value) == "offline embedding model did not finish within 0.2 s"
