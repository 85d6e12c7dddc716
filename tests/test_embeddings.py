"""Behaviour of the embedding providers (OpenAI over a loopback fake server, and the offline models)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest

from rowscope.embeddings import (
    Embedder,
    EmbeddingError,
    HashingEmbedder,
    OfflineEmbedder,
    OpenAIEmbedder,
    build_embedder,
)
from tests.fake_openai import DIMS, FakeOpenAI, Reply, serve_fake_openai, vector_for

API_KEY = "sk-test-SECRET-0123456789abcdef"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with serve_fake_openai() as fake:
        yield fake


def openai_embedder(fake: FakeOpenAI, **kwargs: Any) -> OpenAIEmbedder:
    options: dict[str, Any] = {"max_retries": 2, "timeout": 5.0}
    options.update(kwargs)
    return OpenAIEmbedder(api_key=API_KEY, base_url=fake.base_url, **options)


def argmax(vec: list[float]) -> int:
    return max(range(len(vec)), key=vec.__getitem__)


def cosine(a: list[float], b: list[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))


def norm(vec: list[float]) -> float:
    return math.sqrt(math.fsum(x * x for x in vec))


# --- OpenAIEmbedder -------------------------------------------------------------


@pytest.mark.anyio
async def test_openai_batches_into_ceil_n_over_batch_requests_and_keeps_input_order(
    fake_openai: FakeOpenAI,
) -> None:
    """Ten texts at batch size four make three requests; shuffled response data is put back in order."""
    fake_openai.shuffle = True
    embedder = openai_embedder(fake_openai, batch_size=4)
    texts = [f"t{i}" for i in range(10)]
    try:
        vectors = await embedder.embed(texts)
    finally:
        await embedder.aclose()
    assert [len(r["input"]) for r in fake_openai.requests] == [4, 4, 2]
    assert [r["input"] for r in fake_openai.requests] == [texts[0:4], texts[4:8], texts[8:10]]
    assert [argmax(v) for v in vectors] == list(range(10))
    assert all(len(v) == DIMS and abs(norm(v) - 1.0) < 1e-9 for v in vectors)


@pytest.mark.anyio
async def test_openai_sends_model_dimensions_float_encoding_and_bearer_key(fake_openai: FakeOpenAI) -> None:
    """Each request names the model, asks for the column dimension in float encoding, and authenticates."""
    embedder = openai_embedder(fake_openai, model="text-embedding-3-large", dimensions=DIMS)
    try:
        await embedder.embed(["hello"])
    finally:
        await embedder.aclose()
    (request,) = fake_openai.requests
    assert request["model"] == "text-embedding-3-large"
    assert request["dimensions"] == DIMS
    assert request["encoding_format"] == "float"
    assert fake_openai.auth_headers == [f"Bearer {API_KEY}"]
    assert embedder.model == "openai:text-embedding-3-large"
    assert embedder.dimensions == DIMS


@pytest.mark.anyio
async def test_openai_retries_after_a_429_and_then_succeeds(fake_openai: FakeOpenAI) -> None:
    """A rate-limit answer is retried (honouring retry-after-ms) and the call then succeeds."""
    fake_openai.script = [Reply(status=429, headers={"retry-after-ms": "1"})]
    embedder = openai_embedder(fake_openai)
    try:
        vectors = await embedder.embed(["t3"])
    finally:
        await embedder.aclose()
    assert len(fake_openai.requests) == 2
    assert argmax(vectors[0]) == 3


@pytest.mark.anyio
async def test_openai_retries_after_a_500_and_then_succeeds(fake_openai: FakeOpenAI) -> None:
    """A server error is retried and the call then succeeds."""
    fake_openai.script = [Reply(status=500, headers={"retry-after-ms": "1"})]
    embedder = openai_embedder(fake_openai)
    try:
        vectors = await embedder.embed(["t5"])
    finally:
        await embedder.aclose()
    assert len(fake_openai.requests) == 2
    assert argmax(vectors[0]) == 5


@pytest.mark.anyio
async def test_openai_gives_up_on_persistent_429_with_a_rate_limit_error(fake_openai: FakeOpenAI) -> None:
    """When every attempt is rate limited, the error says so after max_retries + 1 attempts."""
    fake_openai.script = [Reply(status=429, headers={"retry-after-ms": "1"}) for _ in range(5)]
    embedder = openai_embedder(fake_openai, max_retries=1)
    try:
        with pytest.raises(EmbeddingError, match=r"rate limit.*429"):
            await embedder.embed(["t1"])
    finally:
        await embedder.aclose()
    assert len(fake_openai.requests) == 2


@pytest.mark.anyio
async def test_openai_401_raises_embedding_error_without_the_api_key(fake_openai: FakeOpenAI) -> None:
    """A rejected key gives a short EmbeddingError that never echoes the key or the provider's message."""
    fake_openai.script = [
        Reply(
            status=401,
            body={
                "error": {
                    "message": f"Incorrect API key provided: {API_KEY}.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            },
        )
    ]
    embedder = openai_embedder(fake_openai)
    try:
        with pytest.raises(EmbeddingError) as caught:
            await embedder.embed(["t1"])
    finally:
        await embedder.aclose()
    message = str(caught.value)
    assert message == "embedding provider rejected the API key (401, invalid_api_key)"
    assert API_KEY not in message and "SECRET" not in message
    assert caught.value.__cause__ is None
    assert len(fake_openai.requests) == 1  # 401 is not retried


@pytest.mark.anyio
async def test_openai_400_raises_embedding_error_naming_the_status(fake_openai: FakeOpenAI) -> None:
    """A rejected request is not retried and reports its status."""
    fake_openai.script = [Reply(status=400, body={"error": {"message": "bad dimensions", "code": None}})]
    embedder = openai_embedder(fake_openai)
    try:
        with pytest.raises(EmbeddingError, match=r"rejected the request \(400\)"):
            await embedder.embed(["t1"])
    finally:
        await embedder.aclose()
    assert len(fake_openai.requests) == 1


@pytest.mark.anyio
async def test_openai_wrong_vector_length_raises_embedding_error(fake_openai: FakeOpenAI) -> None:
    """Vectors whose length differs from the column dimension are refused."""
    fake_openai.script = [Reply(vector_length=DIMS - 1)]
    embedder = openai_embedder(fake_openai)
    try:
        with pytest.raises(EmbeddingError, match=f"length {DIMS - 1}, expected {DIMS}"):
            await embedder.embed(["t1"])
    finally:
        await embedder.aclose()


@pytest.mark.anyio
async def test_openai_response_with_too_few_embeddings_raises_embedding_error(
    fake_openai: FakeOpenAI,
) -> None:
    """A response whose data does not match the inputs one-to-one is refused."""
    fake_openai.script = [
        Reply(
            body={
                "object": "list",
                "data": [],
                "model": "m",
                "usage": {"prompt_tokens": 0, "total_tokens": 0},
            }
        )
    ]
    embedder = openai_embedder(fake_openai)
    try:
        with pytest.raises(EmbeddingError, match="0 embeddings for 2 inputs"):
            await embedder.embed(["t1", "t2"])
    finally:
        await embedder.aclose()


@pytest.mark.anyio
async def test_openai_unreachable_server_raises_connection_error() -> None:
    """A closed port ends in a short connection EmbeddingError."""
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as probe:
        port = probe.server_address[1]
    embedder = OpenAIEmbedder(api_key=API_KEY, base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
    try:
        with pytest.raises(EmbeddingError, match="could not connect"):
            await embedder.embed(["t1"])
    finally:
        await embedder.aclose()


@pytest.mark.anyio
async def test_openai_empty_input_list_makes_no_request(fake_openai: FakeOpenAI) -> None:
    """Embedding nothing returns nothing without calling the provider."""
    embedder = openai_embedder(fake_openai)
    try:
        assert await embedder.embed([]) == []
    finally:
        await embedder.aclose()
    assert fake_openai.requests == []


@pytest.mark.anyio
async def test_fake_server_speaks_the_sdk_default_base64_wire_format(fake_openai: FakeOpenAI) -> None:
    """The fake server answers the SDK's default base64 encoding the way the SDK decodes it."""
    import openai

    client = openai.AsyncOpenAI(api_key=API_KEY, base_url=fake_openai.base_url, max_retries=0)
    try:
        response = await client.embeddings.create(model="text-embedding-3-large", input=["t9"], dimensions=8)
    finally:
        await client.close()
    assert fake_openai.requests[0]["encoding_format"] == "base64"
    assert response.data[0].embedding == pytest.approx(vector_for("t9", 8))


# --- OfflineEmbedder (all-MiniLM-L6-v2, int8 ONNX) ----------------------------------


@pytest.mark.anyio
async def test_offline_vectors_are_deterministic_unit_length_and_column_sized() -> None:
    """Two instances give identical 1536-long unit vectors, zero beyond the model's 384 values."""
    first, second = OfflineEmbedder(), OfflineEmbedder()
    texts = ["the cat sat on the mat", "quarterly tax filing deadline"]
    try:
        a = await first.embed(texts)
        b = await second.embed(texts)
    finally:
        await first.aclose()
        await second.aclose()
    assert a == b
    for vec in a:
        assert len(vec) == DIMS
        assert abs(norm(vec) - 1.0) < 1e-5
        assert all(x == 0.0 for x in vec[384:])
    assert first.model == "offline:all-MiniLM-L6-v2-int8"
    assert first.dimensions == DIMS


@pytest.mark.anyio
async def test_offline_related_texts_score_higher_than_unrelated_ones() -> None:
    """Paraphrases, even without shared words, are closer than unrelated texts."""
    embedder = OfflineEmbedder()
    try:
        cat, cat2, tax, pw, creds = await embedder.embed(
            [
                "the cat sat on the mat",
                "a cat was sitting on a mat",
                "quarterly tax filing deadline",
                "How do I reset my password?",
                "I forgot my login credentials",
            ]
        )
    finally:
        await embedder.aclose()
    assert cosine(cat, cat2) > cosine(cat, tax) + 0.3
    assert cosine(pw, creds) > cosine(pw, tax) + 0.3
    assert cosine(pw, creds) > cosine(pw, cat) + 0.3


@pytest.mark.anyio
async def test_offline_results_keep_input_order_and_do_not_depend_on_batching() -> None:
    """Texts embedded together (over more than one turn and model batch) or alone give the same
    vectors, in input order."""
    texts = ["short", "a somewhat longer sentence about rows and columns", "", "x " * 400, "mid length text"]
    embedder = OfflineEmbedder()
    try:
        together = await embedder.embed(texts * 2)
        alone = [(await embedder.embed([t]))[0] for t in texts]
    finally:
        await embedder.aclose()
    for x, y in zip(together, alone * 2, strict=True):
        assert cosine(x, y) > 0.99999
    assert await OfflineEmbedder().embed([]) == []


def document(n: int, tag: str) -> list[str]:
    """``n`` chunks of about 1,000 characters: one turn each on the model's thread."""
    return [f"{tag} chunk {i} " + "rows and columns of one user's own data " * 24 for i in range(n)]


async def finishing_order(
    embedder: OfflineEmbedder, calls: list[tuple[str, uuid.UUID, list[str]]]
) -> list[str]:
    """Queue the calls one after another for the model's thread while a turn of the test's holds
    it, then let it go; return the calls' names in the order they finished."""
    finished: list[str] = []

    async def call(name: str, user: uuid.UUID, texts: list[str]) -> None:
        await embedder.embed(texts, user=user)
        finished.append(name)

    await embedder.embed(["warm the model up"])
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tasks, embedder._turns.turn("the test", 1):
            for name, user, texts in calls:
                tasks.start_soon(call, name, user, texts)
                await anyio.wait_all_tasks_blocked()  # queued for its first turn
            assert embedder._turns.waiting == len(calls)
    return finished


@pytest.mark.anyio
async def test_offline_a_search_goes_before_the_turns_other_users_queued_first() -> None:
    """Issue 12 (fair share per user), our choice of how: the model's thread goes to the waiting
    turn with the smallest finish tag (rowscope/embeddings/turns.py), so a search queued after
    three other users' chunks goes first; first come, first served it would wait for all three."""
    a, b, c, d = (uuid.uuid4() for _ in range(4))
    embedder = OfflineEmbedder(timeout=120)  # order, not speed, is under test (the machine is shared)
    try:
        order = await finishing_order(
            embedder,
            [
                ("add a", a, document(1, "a")),
                ("add b", b, document(1, "b")),
                ("add c", c, document(1, "c")),
                ("search", d, ["what do my rows say?"]),
            ],
        )
    finally:
        await embedder.aclose()
    assert order == ["search", "add a", "add b", "add c"]


@pytest.mark.anyio
async def test_offline_a_users_concurrent_calls_share_one_users_turns() -> None:
    """Issue 12 (fair share per user), our choice: three concurrent calls of one user get one
    user's share of the thread between them, so another user's call of the same size, queued after
    them, finishes first; first come, first served, each call had a share and it finished last."""
    a, b = uuid.uuid4(), uuid.uuid4()
    embedder = OfflineEmbedder(timeout=120)  # order, not speed, is under test (the machine is shared)
    try:
        order = await finishing_order(
            embedder,
            [
                ("a1", a, document(4, "a1")),
                ("a2", a, document(4, "a2")),
                ("a3", a, document(4, "a3")),
                ("b", b, document(4, "b")),
            ],
        )
    finally:
        await embedder.aclose()
    assert order == ["b", "a1", "a2", "a3"]


def test_offline_refuses_a_column_smaller_than_the_model() -> None:
    """A column narrower than 384 cannot hold the model's vectors."""
    with pytest.raises(ValueError, match="at least"):
        OfflineEmbedder(dimensions=128)


# --- HashingEmbedder (lexical fallback) -------------------------------------------


@pytest.mark.anyio
async def test_hashing_vectors_are_deterministic_unit_length_and_column_sized() -> None:
    """Two instances give identical unit vectors of the column dimension, empty text included."""
    texts = ["the cat sat on the mat", "", "Ünïcödé text"]
    a = await HashingEmbedder().embed(texts)
    b = await HashingEmbedder().embed(texts)
    assert a == b
    assert all(len(v) == DIMS and abs(norm(v) - 1.0) < 1e-9 for v in a)
    assert HashingEmbedder().model == "offline:hash-v1"


@pytest.mark.anyio
async def test_hashing_lexically_related_texts_score_higher_than_unrelated_ones() -> None:
    """Texts sharing words and word fragments are closer than texts sharing none."""
    cat, cat2, tax = await HashingEmbedder().embed(
        ["the cat sat on the mat", "a cat was sitting on a mat", "quarterly tax filing deadline"]
    )
    assert cosine(cat, cat2) > cosine(cat, tax) + 0.2


@pytest.mark.slow
def test_hashing_vectors_are_identical_in_another_process_with_another_hash_seed() -> None:
    """The hashing uses blake2b, so a fresh interpreter with a different PYTHONHASHSEED agrees."""
    from rowscope.embeddings.offline import hash_embed

    code = (
        "import json; from rowscope.embeddings.offline import hash_embed; "
        "print(json.dumps(hash_embed('rows and columns', 64)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
        cwd=Path(__file__).resolve().parents[1],
    )
    assert json.loads(result.stdout) == hash_embed("rows and columns", 64)


# --- build_embedder -----------------------------------------------------------------


@pytest.mark.anyio
async def test_build_embedder_uses_openai_when_a_key_is_given_and_offline_otherwise() -> None:
    """An API key selects OpenAIEmbedder; no key selects OfflineEmbedder; both honour the dimension."""
    online = build_embedder(
        openai_api_key=API_KEY,
        openai_base_url="http://127.0.0.1:9/v1",
        openai_model="text-embedding-3-small",
        dimensions=DIMS,
        batch_size=16,
    )
    offline = build_embedder(
        openai_api_key=None, openai_base_url=None, openai_model="unused", dimensions=DIMS, batch_size=16
    )
    try:
        assert isinstance(online, OpenAIEmbedder)
        assert online.model == "openai:text-embedding-3-small"
        assert isinstance(offline, OfflineEmbedder)
        assert isinstance(online, Embedder) and isinstance(offline, Embedder)
        assert online.dimensions == offline.dimensions == DIMS
    finally:
        await online.aclose()
        await offline.aclose()


@pytest.mark.anyio
async def test_openai_refuses_empty_text_before_calling_the_provider(fake_openai: FakeOpenAI) -> None:
    """An empty text raises EmbeddingError naming its position, and nothing is sent."""
    embedder = openai_embedder(fake_openai)
    try:
        with pytest.raises(EmbeddingError, match="text 1 is empty"):
            await embedder.embed(["t0", "   "])
    finally:
        await embedder.aclose()
    assert fake_openai.requests == []


@pytest.mark.anyio
async def test_openai_omits_dimensions_for_ada_002_which_does_not_accept_it(fake_openai: FakeOpenAI) -> None:
    """text-embedding-ada-002 gets no dimensions field; its native length is still checked."""
    embedder = openai_embedder(fake_openai, model="text-embedding-ada-002")
    try:
        vectors = await embedder.embed(["t2"])
    finally:
        await embedder.aclose()
    assert "dimensions" not in fake_openai.requests[0]
    assert len(vectors[0]) == DIMS
