"""The chunker's properties (seed 000: 1000-character chunks with 200 overlap)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rowscope.embeddings.chunking import CHUNK_OVERLAP, CHUNK_SIZE, chunk_text

texts = st.text(min_size=0, max_size=6000)
geometry = st.integers(min_value=1, max_value=300).flatmap(
    lambda size: st.tuples(st.just(size), st.integers(min_value=0, max_value=size - 1))
)


@given(texts, geometry)
@settings(max_examples=300, deadline=None)
def test_chunks_cover_every_character_in_order(text: str, sizes: tuple[int, int]) -> None:
    """Our choice: chunks are exact slices, so nothing of the text is lost or altered."""
    size, overlap = sizes
    chunks = chunk_text(text, size, overlap)
    rebuilt = "".join(c.text if i == 0 else c.text[overlap:] for i, c in enumerate(chunks))
    assert rebuilt == text
    assert all(text[c.start : c.start + len(c.text)] == c.text for c in chunks)


@given(texts, geometry)
@settings(max_examples=300, deadline=None)
def test_neighbouring_chunks_share_exactly_the_overlap(text: str, sizes: tuple[int, int]) -> None:
    """Seed 000: consecutive chunks overlap by the configured number of characters."""
    size, overlap = sizes
    chunks = chunk_text(text, size, overlap)
    for before, after in itertools.pairwise(chunks):
        assert len(before.text) == size
        assert after.start - before.start == size - overlap
        assert before.text[size - overlap :] == after.text[:overlap]
    assert all(0 < len(c.text) <= size for c in chunks)


@given(texts)
def test_chunking_the_same_text_twice_gives_the_same_chunks_and_hashes(text: str) -> None:
    """Our choice: deterministic chunks are what make SHA-256 dedup and idempotent training work."""
    first, second = chunk_text(text), chunk_text(text)
    assert first == second
    assert [c.sha256 for c in first] == [c.sha256 for c in second]


def test_the_default_geometry_is_the_seeds() -> None:
    """Seed 000: 1000 characters, 200 overlap; a 2600-character text gives windows at 0, 800, 1600."""
    chunks = chunk_text("x" * 2600)
    assert (CHUNK_SIZE, CHUNK_OVERLAP) == (1000, 200)
    assert [c.start for c in chunks] == [0, 800, 1600]
    assert [len(c.text) for c in chunks] == [1000, 1000, 1000]


def test_empty_text_has_no_chunks() -> None:
    """Our choice: nothing to embed; the tool refuses empty content before chunking."""
    assert chunk_text("") == []


@pytest.mark.parametrize("overlap", [pytest.param(-1, id="negative"), pytest.param(10, id="equal-to-size")])
def test_an_overlap_outside_zero_to_size_is_refused(overlap: int) -> None:
    """Our choice: such geometry would loop forever or skip text."""
    with pytest.raises(ValueError, match="overlap"):
        chunk_text("abc", 10, overlap)
