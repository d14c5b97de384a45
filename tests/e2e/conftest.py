"""Fixtures of the e2e tier beyond the shared ones in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from images import debian


@pytest.fixture(scope="session")
def debian_image() -> Path:
    """The image of `make image-debian` (built once, cached by the hash of its inputs)."""
    return debian.build()
