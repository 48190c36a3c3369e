"""Hypothesis strategies shared by the tests."""

from __future__ import annotations

from hypothesis import strategies as st


def some_bytes(max_size: int) -> st.SearchStrategy[bytes]:
    """Any bytes, empty included, though the drawn choice never is b"": python -bb
    turns hypothesis's cache comparing b"" with 0 (equal hashes) into an error."""
    return st.binary(min_size=1, max_size=max_size + 1).map(lambda b: b[1:])
