"""The XCP-ng pool client when the pool's master goes away or its toolstack restarts,
against the XAPI simulator over real HTTPS on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from agent.drivers.xapi.errors import PoolUnreachable
from agent.drivers.xapi.events import EventLoop, PoolCache
from agent.drivers.xapi.pool import PoolClient
from tests.xapi_sim.process import SimProcess

pytestmark = pytest.mark.integration

WAIT = 60.0  # an upper bound on waits for the event loop, never reached when it works
MakePool = Callable[..., SimProcess]


def _client(pool: SimProcess, pins: dict[str, str] | None = None) -> PoolClient:
    pins = {m.address: m.fingerprint for m in pool.members} if pins is None else pins
    return PoolClient(pool.url(), "root", "secret", pins, label="sim")


@pytest.fixture
def three(sim_pools: MakePool) -> SimProcess:
    """A pool of three hosts: 127.0.0.1 (master), 127.0.0.2, 127.0.0.3."""
    return sim_pools(hosts=3)


@pytest.fixture
def client(three: SimProcess) -> Iterator[PoolClient]:
    c = _client(three)
    c.connect()
    yield c
    c.close()


def test_unreachable_master_fails_over_to_the_promoted_member(
        three: SimProcess, client: PoolClient) -> None:
    pool_uuid = client.pool_uuid
    three.members[0].stop()
    three.switch_master(2)
    with pytest.raises(PoolUnreachable):
        client.call("pool.get_all")  # the call in flight fails; the next one reconnects
    assert client.call("pool.get_all")
    assert client.address == three.members[2].address
    assert client.pool_uuid == pool_uuid
    # both other hosts led to the new master (127.0.0.2 by HOST_IS_SLAVE): one session
    # kept, the other logged out; the first one's, on the lost master, was left alone
    assert len(three.store.logins) == 3 and three.store.sessions == 2


def test_failover_refuses_an_ejected_host_and_takes_the_real_master(
        three: SimProcess, client: PoolClient) -> None:
    three.members[0].stop()
    other_pool = three.eject(1)  # 127.0.0.2 now masters a pool of its own
    three.switch_master(2)
    client.close()
    client.connect()
    assert client.address == three.members[2].address
    (record,) = client.call("pool.get_all_records").values()
    assert record["uuid"] == client.pool_uuid != other_pool


def test_failover_refuses_every_candidate_it_cannot_trust_and_says_why(
        three: SimProcess) -> None:
    pins = {m.address: m.fingerprint for m in three.members}
    pins[three.members[2].address] = "00" * 32  # its certificate is not the pinned one
    c = _client(three, pins)
    c.connect()
    three.members[0].stop()
    other_pool = three.eject(1)
    three.switch_master(2)
    c.close()
    with pytest.raises(PoolUnreachable) as refused:
        c.connect()
    message = str(refused.value)
    assert "no host answers as its master" in message
    assert f"127.0.0.1:{three.port} unreachable" in message
    assert f"host 127.0.0.2 is master of pool {other_pool}" in message
    assert f"host 127.0.0.3:{three.port} presented a TLS certificate" in message
    assert three.members[2].requests == 0


def test_the_event_loop_follows_a_failover(three: SimProcess) -> None:
    cache = PoolCache()
    loop = EventLoop(_client(three), cache)
    loop.start()
    try:
        assert cache.wait_for(lambda c: c.valid, WAIT)
        reads = cache.refetches
        three.members[0].stop()
        three.switch_master(1)
        three.store.expire_sessions()  # the new master knows none of the old sessions
        assert cache.wait_for(lambda c: c.valid and c.refetches > reads, WAIT)
        assert loop.client.address == three.members[1].address
        (pool,) = cache.all("pool").values()
        assert pool["master"] == three.members[1].host_uuid
    finally:
        loop.stop()


def test_toolstack_restart_drops_vanished_tasks_with_one_login(sim_pool: SimProcess) -> None:
    store = sim_pool.store
    task = store.add("task", {"name_label": "Async.VM.start",
                              "resident_on": sim_pool.master.host_uuid})
    cache = PoolCache()
    loop = EventLoop(_client(sim_pool), cache)
    loop.start()
    try:
        assert cache.wait_for(lambda c: c.get("task", task) is not None, WAIT)
        logins, reads = len(store.logins), cache.refetches
        sim_pool.restart_toolstack()
        assert cache.wait_for(lambda c: c.refetches == reads + 1, WAIT)
        assert cache.get("task", task) is None
        assert len(store.logins) == logins + 1
    finally:
        loop.stop()


def test_a_task_vanishing_without_an_event_is_caught_by_the_counts(sim_pool: SimProcess) -> None:
    store = sim_pool.store
    task = store.add("task", {"name_label": "Async.VDI.copy"})
    cache = PoolCache()
    loop = EventLoop(_client(sim_pool), cache)
    loop.start()
    try:
        assert cache.wait_for(lambda c: c.get("task", task) is not None, WAIT)
        reads = cache.refetches
        with sim_pool.batch():
            store.vanish("task", task)
            vm = store.add("VM", {"name_label": "wakes the loop"})
        assert cache.wait_for(lambda c: c.refetches == reads + 1, WAIT)
        assert cache.get("task", task) is None and cache.get("VM", vm) is not None
    finally:
        loop.stop()
