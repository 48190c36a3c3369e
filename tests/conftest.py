"""Fixtures shared by every test directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import init_home


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A fresh qmail home; a module wanting more asks for ``home`` in its own ``home``."""
    h = tmp_path / "qmail"
    init_home(h)
    return h
