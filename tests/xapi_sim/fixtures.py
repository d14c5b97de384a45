"""The pytest fixtures that run simulated pools for one test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.xapi_sim.backend_xl import XlBackend, XlDom0, testguest_initrd
from tests.xapi_sim.dom0 import Dom0Unavailable, ensure_image
from tests.xapi_sim.process import SimProcess


@pytest.fixture
def sim_pools(tmp_path: Path) -> Iterator[Callable[..., SimProcess]]:
    """A maker of simulated pools, each in a process of its own (SimProcess's options);
    each stopped by its PID after the test."""
    made: list[SimProcess] = []

    def make(hosts: int = 2, jsonrpc: bool = True, stable_refs: bool = False,
             xl: XlBackend | None = None) -> SimProcess:
        folder = tmp_path / f"xapi-sim-{len(made)}"
        folder.mkdir()
        pool = SimProcess(folder, hosts=hosts, jsonrpc=jsonrpc, stable_refs=stable_refs,
                          xl=xl)
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


@pytest.fixture(scope="module")
def xen_dom0(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XlDom0]:
    """One Xen dom0 under QEMU TCG for a test module (its 3 GiB and CPU are given back
    once that module ends), booted from an overlay over the cached image (built first if
    needed: skipped, saying why, only when it cannot be built here). Stopped by its PID
    and its overlay removed."""
    try:
        image = ensure_image()
    except Dom0Unavailable as e:
        pytest.skip(f"the Xen dom0 image cannot be built here: {e}")
    dom0 = XlDom0(image, tmp_path_factory.mktemp("xen-dom0"))
    dom0.start()
    try:
        yield dom0
    finally:
        dom0.stop()


@pytest.fixture(scope="module")
def xl_backend(xen_dom0: XlDom0, tmp_path_factory: pytest.TempPathFactory) -> XlBackend:
    """PV guests in the module's dom0, booting the test guest's initramfs."""
    initrd = testguest_initrd(tmp_path_factory.mktemp("testguest") / "initrd.gz")
    return XlBackend(xen_dom0, initrd)
