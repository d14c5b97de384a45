"""Fixtures of the functional tier beyond the shared ones in tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.bootstrap import open_region
from controller.config import ControllerConfig
from controller.region import Region
from tests.functional.helpers import ceph_files


@pytest.fixture
def rbd_region(tmp_path: Path) -> Iterator[Region]:
    """A region whose storage is Ceph RBD (on SQLite); its nodes are played by reports."""
    conf, keyring = ceph_files(tmp_path)
    r = open_region(ControllerConfig(
        data_dir=tmp_path / "controller", storage="rbd", ceph_conf=conf, ceph_keyring=keyring,
        ceph_volume_pools=("vauban", "vauban-fast")))
    yield r
    r.engine.dispose()
