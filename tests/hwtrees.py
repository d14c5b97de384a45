"""Where the recorded hardware trees live (tests/data/hw), for every test tier."""

from __future__ import annotations

from pathlib import Path

TREES = Path(__file__).parent / "data" / "hw"
