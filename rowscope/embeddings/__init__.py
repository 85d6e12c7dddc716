"""Text embedding providers: OpenAI when an API key is configured, a local model otherwise."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from .base import DEFAULT_EMBEDDING_TIMEOUT, Embedder, EmbeddingError
from .offline import HashingEmbedder, OfflineEmbedder
from .openai import OpenAIEmbedder

__all__ = [
    "Embedder",
    "EmbeddingError",
    "HashingEmbedder",
    "OfflineEmbedder",
    "OpenAIEmbedder",
    "build_embedder",
]

log = logging.getLogger(__name__)


def build_embedder(
    *,
    openai_api_key: str | None,
    openai_base_url: str | None,
    openai_model: str,
    dimensions: int,
    batch_size: int,
    timeout: float = DEFAULT_EMBEDDING_TIMEOUT,
) -> Embedder:
    """Return an OpenAIEmbedder when an API key is given, else the local OfflineEmbedder; either
    way one ``embed`` call takes at most ``timeout`` seconds."""
    if openai_api_key:
        host = urlsplit(openai_base_url).netloc if openai_base_url else "api.openai.com"
        log.info("embeddings: OpenAI-compatible API at %s, model %s", host, openai_model)
        return OpenAIEmbedder(
            api_key=openai_api_key,
            base_url=openai_base_url or None,
            model=openai_model,
            dimensions=dimensions,
            batch_size=batch_size,
            timeout=timeout,
        )
    embedder = OfflineEmbedder(dimensions=dimensions, timeout=timeout)
    log.info("embeddings: the offline model %s, on this machine (OPENAI_API_KEY is unset)", embedder.model)
    return embedder
