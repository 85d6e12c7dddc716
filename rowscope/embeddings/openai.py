"""Embeddings from the OpenAI API (or any server speaking its ``/v1/embeddings`` wire format)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .base import DEFAULT_DIMENSIONS, EmbeddingError, check_texts, l2_normalise

# The API refuses requests with more than 2048 inputs.
MAX_INPUTS_PER_REQUEST = 2048

# Models that predate the ``dimensions`` request field; they answer 400 if it
# is sent, and their native length is checked against ``dimensions`` instead.
_NO_DIMENSIONS_FIELD = frozenset({"text-embedding-ada-002"})

# An error ``code`` from the provider (e.g. "invalid_api_key") is only quoted
# when it looks like an identifier; free-text messages are never quoted, since
# some of them echo part of the key.
_SAFE_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

if TYPE_CHECKING:
    import openai


class OpenAIEmbedder:
    """Embedder backed by ``openai.AsyncOpenAI``.

    Retries: we rely on the SDK's own retry loop (``max_retries``). In openai
    3.x (``openai/_base_client.py``) it retries 408, 409, 429, every 5xx,
    connection errors and timeouts, sleeping ``0.5 * 2**n`` seconds (capped at
    8 s, minus up to 25 % jitter) or, when the server sends ``retry-after-ms``
    / ``retry-after`` of at most 120 s, exactly that long. Anything still
    failing afterwards, and every other error, becomes an ``EmbeddingError``.
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
        timeout: float = 30.0,
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
        # Imported here so that importing rowscope.embeddings stays cheap.
        import openai

        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=max_retries,
            timeout=timeout,
        )

    @property
    def model(self) -> str:
        return f"openai:{self._model_name}"

    @property
    def dimensions(self) -> int:
        return self._dimensions

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        items = check_texts(texts)
        for i, text in enumerate(items):
            if not text.strip():
                raise EmbeddingError(f"text {i} is empty; the embedding API rejects empty input")
        vectors: list[list[float]] = []
        for start in range(0, len(items), self._batch_size):
            vectors.extend(await self._embed_batch(items[start : start + self._batch_size]))
        return vectors

    async def aclose(self) -> None:
        await self._client.close()

    async def _embed_batch(self, batch: list[str]) -> list[list[float]]:
        import openai

        try:
            if self._model_name in _NO_DIMENSIONS_FIELD:
                response = await self._client.embeddings.create(
                    model=self._model_name, input=batch, encoding_format="float"
                )
            else:
                response = await self._client.embeddings.create(
                    model=self._model_name,
                    input=batch,
                    dimensions=self._dimensions,
                    encoding_format="float",
                )
        except openai.APIStatusError as exc:
            raise EmbeddingError(self._describe_status(exc)) from None
        except openai.APITimeoutError:
            raise EmbeddingError("embedding provider timed out (after retries)") from None
        except openai.APIConnectionError:
            raise EmbeddingError("could not connect to the embedding provider (after retries)") from None
        except openai.OpenAIError as exc:
            # e.g. APIResponseValidationError: the body did not parse.
            raise EmbeddingError(f"embedding provider call failed ({type(exc).__name__})") from None
        except (ValueError, TypeError):
            # A body that is not JSON or not shaped like an embeddings list.
            raise EmbeddingError("embedding provider returned a malformed response") from None
        return self._vectors_from(response, len(batch))

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
            text = "embedding provider rate limit or quota exceeded (after retries)"
        elif status >= 500:
            text = "embedding provider had a server error (after retries)"
        else:
            text = "embedding provider returned an unexpected HTTP status"
        return self._scrub(text + suffix + hint)

    def _safe_code(self, exc: openai.APIStatusError) -> str | None:
        code: object = getattr(exc, "code", None)
        if isinstance(code, str) and _SAFE_CODE.match(code) and self._api_key not in code:
            return code
        return None

    def _scrub(self, message: str) -> str:
        return message.replace(self._api_key, "***")
