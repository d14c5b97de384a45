"""Recorded hardware trees under tests/data/hw, by name."""

from __future__ import annotations

import pytest

from hardware.sysfs import Root
from tests.hwtrees import TREES


def tree(name: str) -> Root:
    return Root(TREES / name)


@pytest.fixture
def gpu_server() -> Root:
    return tree("gpu-server")


@pytest.fixture
def workstation() -> Root:
    return tree("workstation")


@pytest.fixture
def no_iommu() -> Root:
    return tree("no-iommu")


@pytest.fixture
def this_machine() -> Root:
    return tree("this-machine")
