"""The pool cache and the event loop's steps on a scripted client (agent/drivers/xapi/events)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest

from agent.drivers.xapi.errors import EventsLost, SessionInvalid
from agent.drivers.xapi.events import EventLoop, PoolCache
from agent.drivers.xapi.pool import PoolClient


def _snapshot() -> dict[str, dict[str, dict[str, Any]]]:
    return {
        "pool": {"OpaqueRef:p": {"uuid": "pool-1", "master": "OpaqueRef:h1",
                                 "default_SR": "OpaqueRef:NULL"}},
        "host": {"OpaqueRef:h1": {"uuid": "host-1", "resident_VMs": ["OpaqueRef:v1"]}},
        "VM": {"OpaqueRef:v1": {"uuid": "vm-1", "resident_on": "OpaqueRef:h1",
                                "name_label": "a"},
               "OpaqueRef:v2": {"uuid": "vm-2", "resident_on": "OpaqueRef:NULL",
                                "name_label": "b"}},
    }


def test_records_come_out_by_uuid_with_refs_as_uuids() -> None:
    cache = PoolCache(["pool", "host", "VM"])
    cache.replace(_snapshot())
    assert cache.valid and cache.refetches == 1
    assert cache.get("pool", "pool-1") == {"uuid": "pool-1", "master": "host-1",
                                           "default_SR": None}
    assert cache.get("host", "host-1") == {"uuid": "host-1", "resident_VMs": ["vm-1"]}
    assert set(cache.all("VM")) == {"vm-1", "vm-2"}


def test_a_full_read_drops_what_it_did_not_return() -> None:
    cache = PoolCache(["pool", "host", "VM"])
    cache.replace(_snapshot())
    later = _snapshot()
    del later["VM"]["OpaqueRef:v2"]
    later["VM"] = {"OpaqueRef:new-session-v1": later["VM"]["OpaqueRef:v1"]}
    cache.replace(later)
    assert set(cache.all("VM")) == {"vm-1"}
    # the old session's ref names nothing any more
    cache.apply([{"class": "vm", "operation": "del", "ref": "OpaqueRef:v1"}])
    assert set(cache.all("VM")) == {"vm-1"}


def test_events_add_modify_and_delete() -> None:
    cache = PoolCache(["pool", "host", "VM"])
    cache.replace(_snapshot())
    cache.apply([
        {"class": "vm", "operation": "add", "ref": "OpaqueRef:v3",
         "snapshot": {"uuid": "vm-3", "name_label": "c", "resident_on": "OpaqueRef:h1"}},
        {"class": "vm", "operation": "mod", "ref": "OpaqueRef:v1",
         "snapshot": {"uuid": "vm-1", "name_label": "renamed", "resident_on": "OpaqueRef:h1"}},
        {"class": "vm", "operation": "del", "ref": "OpaqueRef:v2"},
        {"class": "message", "operation": "add", "ref": "OpaqueRef:m", "snapshot": {}},
    ])
    vms = cache.all("VM")
    assert set(vms) == {"vm-1", "vm-3"}
    assert vms["vm-1"]["name_label"] == "renamed" and vms["vm-3"]["resident_on"] == "host-1"
    assert cache.counts_agree({"vm": 2, "host": 1, "pool": 1})
    assert not cache.counts_agree({"vm": 3, "host": 1, "pool": 1})


class ScriptedClient:
    """Answers calls from a table; `on_call` may change the logins count (a re-login)."""

    label = "scripted"

    def __init__(self, answers: dict[str, Any],
                 on_call: Callable[[ScriptedClient, str], None] | None = None) -> None:
        self.answers, self.on_call = answers, on_call
        self.logins = 1
        self.calls: list[tuple[str, tuple[Any, ...], bool]] = []

    def call(self, method: str, *args: Any, relogin: bool = True) -> Any:
        self.calls.append((method, args, relogin))
        if self.on_call is not None:
            self.on_call(self, method)
        answer = self.answers[method]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self) -> None:
        self.calls.append(("close", (), False))

    def interrupt(self) -> None:
        pass


def _answers() -> dict[str, Any]:
    snap = _snapshot()
    return {"pool.get_all": ["OpaqueRef:p"], "event.inject": "00000000000000000009,00",
            "pool.get_all_records": snap["pool"], "host.get_all_records": snap["host"],
            "VM.get_all_records": snap["VM"]}


def _loop(client: ScriptedClient) -> tuple[EventLoop, PoolCache]:
    cache = PoolCache(["pool", "host", "VM"])
    return EventLoop(cast(PoolClient, client), cache, timeout=30.0), cache


def test_refetch_injects_on_the_pool_before_reading_and_follows_from_that_token() -> None:
    answers = _answers()
    answers["event.from"] = {"events": [], "token": "00000000000000000010,00",
                             "valid_ref_counts": {"vm": 2, "host": 1, "pool": 1}}
    client = ScriptedClient(answers)
    loop, cache = _loop(client)
    loop.refetch()
    loop.follow()
    methods = [m for m, _, _ in client.calls]
    assert methods[:2] == ["pool.get_all", "event.inject"]
    assert client.calls[1][1] == ("pool", "OpaqueRef:p")
    assert client.calls[-1] == ("event.from", (["pool", "host", "vm"],
                                               "00000000000000000009,00", 30.0), False)
    assert cache.valid and set(cache.all("VM")) == {"vm-1", "vm-2"}


def test_a_new_session_during_the_full_read_means_reading_again() -> None:
    def relogin_on_vms(client: ScriptedClient, method: str) -> None:
        if method == "VM.get_all_records":
            client.logins += 1
    loop, cache = _loop(ScriptedClient(_answers(), relogin_on_vms))
    with pytest.raises(SessionInvalid):
        loop.refetch()
    assert not cache.valid


def test_event_from_on_a_new_session_or_with_other_counts_asks_for_a_full_read() -> None:
    answers = _answers()
    answers["event.from"] = {"events": [], "token": "t",
                             "valid_ref_counts": {"vm": 5, "host": 1, "pool": 1}}
    loop, _ = _loop(ScriptedClient(answers))
    loop.refetch()
    with pytest.raises(EventsLost, match="counts"):
        loop.follow()

    def relogin(client: ScriptedClient, method: str) -> None:
        if method == "event.from":
            client.logins += 1
    loop, _ = _loop(ScriptedClient(_answers() | {"event.from": answers["event.from"]},
                                   relogin))
    loop.refetch()
    with pytest.raises(EventsLost, match="new session"):
        loop.follow()


def test_a_malformed_answer_invalidates_the_cache_and_the_loop_goes_on() -> None:
    answers = _answers()
    answers["event.from"] = {"token": "no events key"}
    client = ScriptedClient(answers)
    loop, cache = _loop(client)
    loop.start()
    try:
        assert cache.wait_for(lambda c: c.problem.startswith("unexpected failure"), 60.0)
        assert not cache.valid
    finally:
        loop.stop()
    assert ("close", (), False) in client.calls
