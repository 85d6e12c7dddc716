"""Splitting training text into overlapping chunks (seed 000: 1000 characters, 200 overlap).

Windows start every ``size - overlap`` characters; the last window ends at the end of the text.
Chunks are exact slices, so they cover every character, neighbours share exactly ``overlap``
characters, and the same text always gives the same chunks (which makes SHA-256 dedup work).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

CHUNK_SIZE = 1000
CHUNK_OVERLAP = 200


@dataclass(frozen=True)
class Chunk:
    index: int
    start: int
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def chunk_text(text: str, size: int = CHUNK_SIZE, overlap: int = CHUNK_OVERLAP) -> list[Chunk]:
    if not 0 <= overlap < size:
        raise ValueError("overlap must be at least 0 and smaller than the chunk size")
    step = size - overlap
    chunks: list[Chunk] = []
    start = 0
    while start < len(text):
        chunks.append(Chunk(index=len(chunks), start=start, text=text[start : start + size]))
        if start + size >= len(text):
            break
        start += step
    return chunks
