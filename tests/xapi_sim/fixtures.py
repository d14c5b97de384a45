"""The pytest fixture that runs a simulated pool for one test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.xapi_sim.server import SimPool


@pytest.fixture
def sim_pools(tmp_path: Path) -> Iterator[Callable[..., SimPool]]:
    """A maker of started pools (SimPool's arguments); each stopped (listeners closed,
    sessions ended) after the test."""
    made: list[SimPool] = []

    def make(hosts: int = 2, **options: object) -> SimPool:
        folder = tmp_path / f"xapi-sim-{len(made)}"
        folder.mkdir()
        pool = SimPool(folder, hosts=hosts, **options)  # type: ignore[arg-type]
        made.append(pool)
        pool.start()
        return pool

    try:
        yield make
    finally:
        for pool in made:
            pool.stop()


@pytest.fixture
def sim_pool(sim_pools: Callable[..., SimPool]) -> SimPool:
    """A two-host pool listening on 127.0.0.1 (master) and 127.0.0.2, same port."""
    return sim_pools()
