"""Fixtures shared by every tier: a region (controller state) on SQLite or PostgreSQL."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from controller.app import create_app
from controller.bootstrap import open_region
from controller.config import ControllerConfig
from controller.db.migrate import upgrade
from controller.db.session import make_engine
from controller.region import Region
from tests.ceph_fixtures import ceph_admin, ceph_cluster, ceph_minicluster
from tests.functional.helpers import speaks_agent_protocol
from tests.postgres import postgres_server, recreate_database

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


def _reset_postgres(url: str) -> None:
    """The database at `url` made anew, its schema at the newest revision (a copy of one
    migrated once per server: what `upgrade` makes of an empty database, without running
    every migration again for each test; test_migrations runs them)."""
    recreate_database(url, upgrade)


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A controller database file at the newest revision, migrated once per session."""
    path = tmp_path_factory.mktemp("migrated") / "controller.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    with contextlib.closing(sqlite3.connect(path)) as conn:  # one file, no WAL: it is copied
        conn.execute("PRAGMA journal_mode=DELETE")
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def region(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Region]:
    """A freshly initialised controller state on each database the product supports."""
    url = ""
    data = tmp_path / "controller"
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        _reset_postgres(url)
    else:
        data.mkdir(mode=0o700)
        shutil.copyfile(request.getfixturevalue("migrated_sqlite"), data / "controller.db")
    r = open_region(ControllerConfig(data_dir=data, database_url=url, node_down_after_s=30))
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
