"""Change notices between controller processes on one real PostgreSQL: a desired state
changed in one wakes the long-polls waiting in another; a rolled-back change wakes no one;
a lost listening connection is made again and wakes every waiter.

Two regions opened on the same database stand for two worker processes: each has its own
notifier, heartbeat book, origin and listening connection, as a process would.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from controller.bootstrap import hear_other_processes, open_region
from controller.config import ControllerConfig
from controller.db.models import Node
from controller.notices import NoticeListener
from controller.region import Region
from controller.services import desired
from tests.conftest import _reset_postgres
from tests.e2e.region import wait_for

NOTICE_WAIT_S = 30.0  # a notice normally arrives within milliseconds


@pytest.fixture
def two_processes(postgres_url: str, tmp_path: Path) -> Iterator[tuple[Region, Region]]:
    _reset_postgres(postgres_url)
    regions = [open_region(ControllerConfig(data_dir=tmp_path / name, database_url=postgres_url))
               for name in ("first", "second")]
    yield regions[0], regions[1]
    for r in regions:
        r.engine.dispose()


@pytest.fixture
def listener(two_processes: tuple[Region, Region]) -> Iterator[NoticeListener]:
    """The second process listening for the first one's notices."""
    started = hear_other_processes(two_processes[1])
    assert started is not None
    assert started.listening.wait(NOTICE_WAIT_S), "the listener never connected"
    yield started
    started.stop()
    started.join(NOTICE_WAIT_S)
    assert not started.is_alive()


def _node(region: Region, name: str) -> str:
    with region.sessions() as db, db.begin():
        node = Node(name=name, cert_serial="1")
        db.add(node)
        db.flush()
        return node.id


def _bump(region: Region, node_id: str, commit: bool = True) -> None:
    with region.sessions() as db:
        db.begin()
        node = db.get(Node, node_id)
        assert node is not None
        desired.bump(node)
        if commit:
            db.commit()
        else:
            db.rollback()


def test_a_change_committed_in_one_process_wakes_the_long_poll_in_another(
        two_processes: tuple[Region, Region], listener: NoticeListener) -> None:
    first, second = two_processes
    node_id, other_id = _node(first, "n1"), _node(first, "n2")
    second.heartbeats.ingested(node_id, "last report", datetime.now(UTC))
    with second.notifier.watch(node_id) as changed, \
            second.notifier.watch(other_id) as untouched:
        _bump(first, node_id)
        assert changed.wait(NOTICE_WAIT_S), "the other process's long-poll was not woken"
        assert not untouched.is_set()
    # the same report is ingested in full again: it may now settle what the change asked
    assert not second.heartbeats.is_repeat(node_id, "last report", datetime.now(UTC))


def test_a_rolled_back_change_wakes_no_one_and_a_process_skips_its_own_notices(
        two_processes: tuple[Region, Region], listener: NoticeListener) -> None:
    first, second = two_processes
    node_id, witness_id = _node(first, "n1"), _node(first, "witness")
    heard: list[list[str]] = []
    own = NoticeListener(first.engine, first.origin, heard.append, lambda: None)
    own.start()
    try:
        assert own.listening.wait(NOTICE_WAIT_S)
        with second.notifier.watch(node_id) as changed, \
                second.notifier.watch(witness_id) as witness:
            _bump(first, node_id, commit=False)
            _bump(first, witness_id)  # notices arrive in commit order: this one comes after
            assert witness.wait(NOTICE_WAIT_S)
            assert not changed.is_set(), "a rolled-back change woke a long-poll"
    finally:
        own.stop()
        own.join(NOTICE_WAIT_S)
    assert heard == [], "a process heard its own notice"


def test_a_lost_listening_connection_comes_back_and_wakes_every_waiter(
        two_processes: tuple[Region, Region], listener: NoticeListener,
        postgres_url: str) -> None:
    first, second = two_processes
    node_id = _node(first, "n1")
    with second.notifier.watch(node_id) as changed:
        admin = create_engine(postgres_url)
        try:
            with admin.begin() as conn:
                killed = conn.execute(text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()")).scalar()
        finally:
            admin.dispose()
        assert killed == 1
        # woken once listening again: a change made while it was deaf is read afresh
        assert changed.wait(NOTICE_WAIT_S), "the waiter was not woken after the reconnect"
    assert wait_for(listener.listening.is_set, NOTICE_WAIT_S, "the listener to reconnect")
    with second.notifier.watch(node_id) as changed:
        _bump(first, node_id)
        assert changed.wait(NOTICE_WAIT_S), "notices are not heard after the reconnect"


def test_sqlite_is_served_by_one_process_and_hears_no_notices(tmp_path: Path) -> None:
    region = open_region(ControllerConfig(data_dir=tmp_path / "c"))
    try:
        assert hear_other_processes(region) is None
        with pytest.raises(ValueError, match="more than one worker needs PostgreSQL"):
            ControllerConfig(data_dir=tmp_path / "c", workers=2)
    finally:
        region.engine.dispose()
