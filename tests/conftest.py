"""Fixtures shared by every tier: a region (controller state) on SQLite or PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from controller.app import create_app
from controller.bootstrap import open_region
from controller.config import ControllerConfig
from controller.region import Region
from tests.ceph_fixtures import ceph_admin, ceph_cluster, ceph_minicluster
from tests.functional.helpers import speaks_agent_protocol
from tests.postgres import postgres_server

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


def _reset_postgres(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def region(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Region]:
    """A freshly initialised controller state on each database the product supports."""
    url = ""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        _reset_postgres(url)
    r = open_region(ControllerConfig(data_dir=tmp_path / "controller", database_url=url,
                                     node_down_after_s=30))
    yield r
    r.events.stop()
    r.engine.dispose()


@pytest.fixture
def app(region: Region) -> Flask:
    return create_app(region)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client that speaks the current agent protocol unless a request says otherwise."""
    return speaks_agent_protocol(app.test_client())


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[list[int]]:
    """libvirtd on qemu:///system, started for the session if it was not running.

    Yields the PIDs of the daemons the session started (a test that restarts them keeps
    the list current); exactly those are stopped at the end.
    """
    from agent.hostprep import ensure_libvirtd, stop_daemons

    started = ensure_libvirtd("qemu:///system")
    yield started
    stop_daemons(started)


@pytest.fixture(scope="session")
def guest_kernel(testguest_image: Path) -> Path:
    """A kernel to boot directly: the host's in /boot, else the test guest's own."""
    from hardware.kvmprobe import find_kernel

    found = find_kernel() or next((REPO / "var/cache/testguest").glob("pkgs/*/boot/vmlinuz-*"))
    return found


@pytest.fixture(scope="session")
def testguest_image() -> Path:
    """The bootable test guest (built once, cached under var/ like `make image` does)."""
    from images.testguest.build import build

    return build(REPO / "var/images/testguest.raw", REPO / "var/cache/testguest").image


__all__ = ["ceph_admin", "ceph_cluster", "ceph_minicluster"]  # shared by every tier
