"""The pytest fixture that runs a simulated pool for one test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.xapi_sim.server import SimPool


@pytest.fixture
def sim_pool(tmp_path: Path) -> Iterator[SimPool]:
    """A two-host pool listening on 127.0.0.1 (master) and 127.0.0.2, same port;
    stopped (listeners closed, sessions ended) after the test."""
    folder = tmp_path / "xapi-sim"
    folder.mkdir()
    pool = SimPool(folder, hosts=2)
    pool.start()
    try:
        yield pool
    finally:
        pool.stop()
