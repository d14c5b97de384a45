"""Reads never wait for a writer, and a desired-state change wakes exactly its node's
long-polls, once committed (never on a rollback)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from flask.testing import FlaskClient
from sqlalchemy import text

from controller.db.models import Node
from controller.db.session import ReadOnlySessionError
from controller.region import Region
from controller.services import desired
from tests.functional.helpers import Api


def test_reads_answer_while_a_writer_holds_the_lock(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    api.join_node("n1")
    with region.sessions() as writer:
        writer.execute(text("UPDATE nodes SET generation = generation"))  # holds the write lock
        for path in ("/api/v1/nodes", "/api/v1/images", "/api/v1/status", "/api/v1/audit-events",
                 "/api/v1/operations"):
            r = api.get(path)
            assert r.status_code == 200, (path, r.json)
        writer.rollback()


def test_read_sessions_refuse_to_write(region: Region) -> None:
    with region.reads() as session:
        node = Node(name="sneaky", cert_serial="1")
        session.add(node)
        with pytest.raises(ReadOnlySessionError):
            session.flush()


def test_a_change_wakes_only_its_own_node_and_only_once_committed(
        client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    n1, n2 = api.join_node("n1"), api.join_node("n2")
    with region.notifier.watch(n1.id) as woke1, region.notifier.watch(n2.id) as woke2:
        with region.sessions() as s:
            desired.bump(s.get(Node, n1.id))  # type: ignore[arg-type]
            s.rollback()
        assert not woke1.is_set()
        with region.sessions() as s:
            desired.bump(s.get(Node, n1.id))  # type: ignore[arg-type]
            s.commit()
        assert woke1.is_set() and not woke2.is_set()
    assert region.notifier.waiting() == 0


def test_a_savepoint_rolled_back_keeps_the_wake_up_of_earlier_changes(
        client: FlaskClient, region: Region) -> None:
    """A retry inside a transaction (a savepoint, as IPAM uses) must not lose the notice of
    a change made before it in the same transaction."""
    api = Api(client, region)
    node = api.join_node("n1")
    with region.notifier.watch(node.id) as woke:
        with region.sessions() as s:
            desired.bump(s.get(Node, node.id))  # type: ignore[arg-type]
            savepoint = s.begin_nested()
            savepoint.rollback()
            s.commit()
        assert woke.is_set()


def test_long_poll_answers_at_once_when_the_change_came_before_it_waited(
        client: FlaskClient, region: Region, monkeypatch: pytest.MonkeyPatch) -> None:
    api = Api(client, region)
    node = api.join_node("n1")
    gen = api.desired(node)["generation"]
    with region.sessions() as s:
        desired.bump(s.get(Node, node.id))  # type: ignore[arg-type]
        s.commit()
    real_watch = region.notifier.watch

    @contextmanager
    def watch_refusing_to_wait(node_id: str) -> Iterator[threading.Event]:
        with real_watch(node_id) as event:
            def waited(timeout: float | None = None) -> bool:
                raise AssertionError("the poll waited although its change was already there")
            monkeypatch.setattr(event, "wait", waited)
            yield event

    monkeypatch.setattr(region.notifier, "watch", watch_refusing_to_wait)
    assert api.desired(node, after=gen, wait=60)["generation"] == gen + 1


def test_status_counts_the_waiting_long_polls(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    node = api.join_node("n1")
    assert api.get("/api/v1/status").json["agents_waiting"] == 0  # type: ignore[index]
    with region.notifier.watch(node.id):
        assert api.get("/api/v1/status").json["agents_waiting"] == 1  # type: ignore[index]
