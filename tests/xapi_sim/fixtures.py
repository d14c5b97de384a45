"""The pytest fixtures that run simulated pools for one test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.xapi_sim.process import SimProcess


@pytest.fixture
def sim_pools(tmp_path: Path) -> Iterator[Callable[..., SimProcess]]:
    """A maker of simulated pools, each in a process of its own (SimProcess's options);
    each stopped by its PID after the test."""
    made: list[SimProcess] = []

    def make(hosts: int = 2, jsonrpc: bool = True, stable_refs: bool = False) -> SimProcess:
        folder = tmp_path / f"xapi-sim-{len(made)}"
        folder.mkdir()
        pool = SimProcess(folder, hosts=hosts, jsonrpc=jsonrpc, stable_refs=stable_refs)
        made.append(pool)
        return pool

    try:
        yield make
    finally:
        for pool in made:
            pool.stop()


@pytest.fixture
def sim_pool(sim_pools: Callable[..., SimProcess]) -> SimProcess:
    """A two-host pool listening on 127.0.0.1 (master) and 127.0.0.2, same port."""
    return sim_pools()
