"""Embeddings from the OpenAI API (or any server speaking its ``/v1/embeddings`` wire format)."""

from __future__ import annotations

import email.utils
import math
import random
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import anyio

from .base import (
    DEFAULT_DIMENSIONS,
    DEFAULT_EMBEDDING_TIMEOUT,
    EmbeddingError,
    check_texts,
    check_timeout,
    l2_normalise,
    seconds,
)

# The API refuses requests with more than 2048 inputs.
MAX_INPUTS_PER_REQUEST = 2048

# Models that predate the ``dimensions`` request field; they answer 400 if it
# is sent, and their native length is checked against ``dimensions`` instead.
_NO_DIMENSIONS_FIELD = frozenset({"text-embedding-ada-002"})

# An error ``code`` from the provider (e.g. "invalid_api_key") is only quoted
# when it looks like an identifier; free-text messages are never quoted, since
# some of them echo part of the key.
_SAFE_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

# The retry policy of openai 3.x's own loop (``openai/_base_client.py``: ``_should_retry``,
# ``_calculate_retry_timeout``), which we run ourselves so that it fits in the time bound.
_RETRY_STATUSES = frozenset({408, 409, 429})
_INITIAL_RETRY_DELAY = 0.5
_MAX_RETRY_DELAY = 8.0
_MAX_RETRY_AFTER = 120.0
# A retry is started only when at least this much of the bound is left for it after its wait.
_MIN_ATTEMPT_SECONDS = 0.1

if TYPE_CHECKING:
    import openai


class _OutOfTime(Exception):
    """The time bound passed, or the next retry could not start before it."""


class OpenAIEmbedder:
    """Embedder backed by ``openai.AsyncOpenAI``.

    Time: one ``embed`` call takes at most ``timeout`` seconds in all (every batch, attempt and
    backoff), then raises an EmbeddingError saying the provider did not answer in time. Each
    attempt gets ``attempt_timeout`` seconds or what is left of the bound, whichever is less, and
    the whole call runs in a cancel scope with the bound as deadline, so an attempt that trickles
    bytes (httpx's timeouts are per read, not per request) is cut off there too.

    Retries: the SDK's own loop is off (``max_retries=0``), since it gives every attempt the same
    timeout and sleeps whatever Retry-After says (up to 120 s) whatever time is left. We run its
    policy ourselves: 408, 409, 429, every 5xx (``x-should-retry`` overriding), connection errors
    and timeouts are retried up to ``max_retries`` times, after ``0.5 * 2**n`` seconds (capped at
    8 s, minus up to 25 % jitter) or, when the server sends ``retry-after-ms`` / ``retry-after`` of
    at most 120 s, exactly that long (longer: not retried). A retry whose wait would leave its
    attempt less than 0.1 s of the bound is not started: the call fails at once. Anything still
    failing afterwards, and every other error, becomes an ``EmbeddingError``.

    Fairness: nothing here is shared between calls but the SDK's httpx connection pool (up to
    1000 connections), so one caller's hanging request does not delay another's.
    """

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None,
        model: str = "text-embedding-3-large",
        dimensions: int = DEFAULT_DIMENSIONS,
        batch_size: int = 64,
        max_retries: int = 5,
        timeout: float = DEFAULT_EMBEDDING_TIMEOUT,
        attempt_timeout: float = 30.0,
    ) -> None:
        if not api_key:
            raise ValueError("api_key must be a non-empty string")
        if not model:
            raise ValueError("model must be a non-empty string")
        if dimensions < 1:
            raise ValueError("dimensions must be positive")
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        if max_retries < 0:
            raise ValueError("max_retries must not be negative")
        self._api_key = api_key
        self._model_name = model
        self._dimensions = dimensions
        self._batch_size = min(batch_size, MAX_INPUTS_PER_REQUEST)
        self._max_retries = max_retries
        self._timeout = check_timeout(timeout)
        self._attempt_timeout = check_timeout(attempt_timeout)
        # Imported here so that importing rowscope.embeddings stays cheap.
        import openai

        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,  # retried by _embed_batch, within the time bound
            timeout=self._attempt_timeout,
        )

    @property
    def model(self) -> str:
        return f"openai:{self._model_name}"

    @property
    def dimensions(self) -> int:
        return self._dimensions

    async def embed(self, texts: Sequence[str], *, user: uuid.UUID | None = None) -> list[list[float]]:
        # ``user`` is not sent: the API answers concurrent requests, and user ids stay here.
        items = check_texts(texts)
        for i, text in enumerate(items):
            if not text.strip():
                raise EmbeddingError(f"text {i} is empty; the embedding API rejects empty input")
        if not items:
            return []
        out_of_time = f"embedding provider did not answer within {seconds(self._timeout)}"
        vectors: list[list[float]] = []
        with anyio.move_on_after(self._timeout) as scope:
            try:
                for start in range(0, len(items), self._batch_size):
                    batch = items[start : start + self._batch_size]
                    vectors.extend(await self._embed_batch(batch, scope.deadline))
            except _OutOfTime as exc:
                raise EmbeddingError(str(exc) or out_of_time) from None
            return vectors
        raise EmbeddingError(out_of_time)  # the deadline passed during an attempt or a backoff

    async def aclose(self) -> None:
        await self._client.close()

    async def _embed_batch(self, batch: list[str], deadline: float) -> list[list[float]]:
        """One request with retries, none of them starting or lasting past ``deadline``."""
        import openai

        for attempt in range(self._max_retries + 1):
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                raise _OutOfTime
            silent = False  # the attempt got no answer at all
            try:
                response = await self._create(batch, min(self._attempt_timeout, remaining))
            except openai.APIStatusError as exc:
                failure = self._describe_status(exc)
                delay = self._retry_delay(exc.response.status_code, exc.response.headers, attempt)
                if delay is None:  # not retryable: the status is the answer
                    raise EmbeddingError(self._scrub(failure)) from None
            except openai.APITimeoutError:
                failure, delay, silent = "embedding provider timed out", self._backoff(attempt), True
            except openai.APIConnectionError:
                failure, delay = "could not connect to the embedding provider", self._backoff(attempt)
            except openai.OpenAIError as exc:
                # e.g. APIResponseValidationError: the body did not parse.
                raise EmbeddingError(f"embedding provider call failed ({type(exc).__name__})") from None
            except (ValueError, TypeError):
                # A body that is not JSON or not shaped like an embeddings list.
                raise EmbeddingError("embedding provider returned a malformed response") from None
            else:
                return self._vectors_from(response, len(batch))
            if attempt == self._max_retries:
                break
            if anyio.current_time() + delay + _MIN_ATTEMPT_SECONDS >= deadline:
                if silent:
                    raise _OutOfTime  # the provider did not answer, and there is no time to ask again
                raise _OutOfTime(
                    self._scrub(failure)
                    + f"; no time left to retry within the {seconds(self._timeout)} embedding time limit"
                )
            await anyio.sleep(delay)
        tries = self._max_retries + 1
        raise EmbeddingError(
            self._scrub(failure + (f"; gave up after {tries} attempts" if tries > 1 else ""))
        )

    async def _create(self, batch: list[str], attempt_seconds: float) -> object:
        if self._model_name in _NO_DIMENSIONS_FIELD:
            return await self._client.embeddings.create(
                model=self._model_name, input=batch, encoding_format="float", timeout=attempt_seconds
            )
        return await self._client.embeddings.create(
            model=self._model_name,
            input=batch,
            dimensions=self._dimensions,
            encoding_format="float",
            timeout=attempt_seconds,
        )

    def _retry_delay(self, status: int, headers: Mapping[str, str], attempt: int) -> float | None:
        """Seconds to wait before retrying a failed status, or None: do not retry it."""
        retry_after = _retry_after(headers)
        if retry_after is not None and retry_after > _MAX_RETRY_AFTER:
            return None
        should = headers.get("x-should-retry")
        if should == "false" or (should != "true" and status not in _RETRY_STATUSES and status < 500):
            return None
        if retry_after is not None and retry_after > 0:
            return retry_after
        return self._backoff(attempt)

    @staticmethod
    def _backoff(attempt: int) -> float:
        delay = min(_INITIAL_RETRY_DELAY * 2.0 ** min(attempt, 1000), _MAX_RETRY_DELAY)
        return delay * (1 - 0.25 * random.random())

    def _vectors_from(self, response: object, expected: int) -> list[list[float]]:
        from openai.types import CreateEmbeddingResponse

        # The SDK builds response models without strict validation, so every
        # field is checked by hand before it is trusted.
        if not isinstance(response, CreateEmbeddingResponse):
            raise EmbeddingError("embedding provider returned a malformed response")
        data: object = getattr(response, "data", None)
        if not isinstance(data, list) or len(data) != expected:
            got = len(data) if isinstance(data, list) else "no"
            raise EmbeddingError(f"embedding provider returned {got} embeddings for {expected} inputs")
        slots: list[list[float] | None] = [None] * expected
        for item in data:
            index: object = getattr(item, "index", None)
            vector: object = getattr(item, "embedding", None)
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < expected:
                raise EmbeddingError("embedding provider returned a malformed response (bad index)")
            if slots[index] is not None:
                raise EmbeddingError("embedding provider returned a malformed response (duplicate index)")
            if not isinstance(vector, list) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in vector
            ):
                raise EmbeddingError(
                    "embedding provider returned a malformed response (embedding is not a list of numbers)"
                )
            if len(vector) != self._dimensions:
                raise EmbeddingError(
                    f"embedding provider returned vectors of length {len(vector)}, "
                    f"expected {self._dimensions}"
                )
            floats = [float(x) for x in vector]
            if not all(math.isfinite(x) for x in floats):
                raise EmbeddingError("embedding provider returned non-finite values")
            slots[index] = l2_normalise(floats)
        out: list[list[float]] = []
        for vec in slots:
            if vec is None:  # unreachable: expected distinct in-range indices
                raise EmbeddingError("embedding provider returned a malformed response (missing index)")
            out.append(vec)
        return out

    def _describe_status(self, exc: openai.APIStatusError) -> str:
        status = exc.status_code
        code = self._safe_code(exc)
        suffix = f" ({status}{', ' + code if code else ''})"
        hint = ""
        if status == 401:
            text = "embedding provider rejected the API key"
        elif status == 403:
            text = "embedding provider refused access for this API key or model"
        elif status == 404:
            text = f"embedding provider does not know model {self._model_name!r} or the endpoint"
        elif status == 400 or status == 422:
            text = "embedding provider rejected the request"
            hint = "; check the model name, dimensions and input sizes"
        elif status == 429:
            text = "embedding provider rate limit or quota exceeded"
        elif status >= 500:
            text = "embedding provider had a server error"
        else:
            text = "embedding provider returned an unexpected HTTP status"
        return text + suffix + hint

    def _safe_code(self, exc: openai.APIStatusError) -> str | None:
        code: object = getattr(exc, "code", None)
        if isinstance(code, str) and _SAFE_CODE.match(code) and self._api_key not in code:
            return code
        return None

    def _scrub(self, message: str) -> str:
        return message.replace(self._api_key, "***")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks us to wait (``retry-after-ms``, then ``retry-after`` as seconds or
    an HTTP date), as openai 3.x reads them; None when it does not say."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            delay = float(value)
        except ValueError:
            continue
        return delay / divisor if math.isfinite(delay) else _MAX_RETRY_AFTER + 1
    date = headers.get("retry-after")
    parsed = email.utils.parsedate_tz(date) if date else None
    if parsed is None:
        return None
    return float(email.utils.mktime_tz(parsed) - time.time())
