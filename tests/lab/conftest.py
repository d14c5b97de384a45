"""The lab tier's shared fixtures: the session's lab and region, and what a test made in it."""

from collections.abc import Iterator

import pytest

from tests.lab.fixtures import lab3
from tests.lab.region import LabRegion, lab_region
from tests.lab.test_multinode import Made

__all__ = ["lab3", "lab_region"]


@pytest.fixture
def made(lab_region: LabRegion) -> Iterator[Made]:
    """What the test makes in the region (VMs, networks), deleted at its end."""
    m = Made(lab_region)
    try:
        yield m
    finally:
        m.delete_all()
