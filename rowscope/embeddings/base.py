"""The embedding interface shared by every provider."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

DEFAULT_DIMENSIONS = 1536
# Seconds one ``embed`` call may take in all, retries and backoff included (ROWSCOPE_EMBEDDING_TIMEOUT).
DEFAULT_EMBEDDING_TIMEOUT = 20.0


class EmbeddingError(Exception):
    """Embedding failed; message is safe to show to an AI model.

    It carries no secrets and no raw response bodies beyond a short status.
    """


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into fixed-length, L2-normalised vectors."""

    @property
    def model(self) -> str:
        """Identifier recorded per chunk, e.g. ``openai:text-embedding-3-large``."""
        ...

    @property
    def dimensions(self) -> int:
        """Length of every returned vector (the database column dimension)."""
        ...

    async def embed(self, texts: Sequence[str], *, user: uuid.UUID | None = None) -> list[list[float]]:
        """Embed ``texts``; one unit-length vector per text, in input order.

        ``user``: whom the texts are embedded for (None: nobody in particular). A provider with one
        worker shares it fairly between users by it (offline.py); it is never sent anywhere.
        Bounded in total time: a call that runs out of it raises EmbeddingError.
        """
        ...

    async def aclose(self) -> None:
        """Release network clients or model sessions."""
        ...


def seconds(value: float) -> str:
    """``value`` as a message shows it: 20.0 -> "20 s", 0.5 -> "0.5 s"."""
    return f"{value:g} s"


def check_timeout(value: float) -> float:
    """Validate a total time bound in seconds."""
    if not 0 < value < float("inf"):
        raise ValueError("timeout must be a positive number of seconds")
    return float(value)


def l2_normalise(vector: Sequence[float]) -> list[float]:
    """Return ``vector`` scaled to unit length; raise EmbeddingError for zero or non-finite input."""
    total = math.fsum(x * x for x in vector)
    if not math.isfinite(total) or total <= 0.0:
        raise EmbeddingError("embedding vector is zero or not finite")
    norm = math.sqrt(total)
    return [float(x) / norm for x in vector]


def zero_pad(vector: Sequence[float], dimensions: int) -> list[float]:
    """Extend ``vector`` with zeros to ``dimensions`` entries.

    Zero padding leaves dot products, norms and therefore cosine similarity
    between padded vectors exactly as they were, so a 384-d model can live in a
    1536-d column without changing search results.
    """
    if len(vector) > dimensions:
        raise EmbeddingError(f"embedding has {len(vector)} values, more than the {dimensions} expected")
    return [*map(float, vector), *([0.0] * (dimensions - len(vector)))]


def check_texts(texts: Sequence[str]) -> list[str]:
    """Validate the ``embed`` argument and return it as a list."""
    if isinstance(texts, str):
        raise TypeError("embed() takes a sequence of strings, not a single string")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is {type(text).__name__}, expected str")
    return out
