"""What a pool agent reports of its pool, read from the event cache against the simulator:
the hosts, the capacity the region places on, and an unreachable pool said in words."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.drivers.xapi.link import PoolLink
from agent.protocol import XapiPoolInfo, XapiSettings
from tests.xapi_sim.process import SimProcess

GiB_MIB = 1024
WAIT = 60.0  # a bound on waits for the cache, never reached when the loop works


@pytest.fixture
def link(sim_pool: SimProcess) -> Iterator[PoolLink]:
    settings = XapiSettings(url=sim_pool.url().rstrip("/"), username="root",
                            password="secret", pool_uuid=_pool_uuid(sim_pool),
                            pins={m.address: m.fingerprint for m in sim_pool.members})
    made = PoolLink(settings, "sim")
    made.start()
    try:
        yield made
    finally:
        made.stop()


def _pool_uuid(sim: SimProcess) -> str:
    return next(iter(sim.store.live("pool")))


def _wait(link: PoolLink, check: object) -> XapiPoolInfo:
    """The pool info once `check(info)` holds (checked at each cache change)."""
    assert callable(check)
    assert link.cache.wait_for(lambda _c: bool(check(link.info())), WAIT), link.info()
    return link.info()


def test_the_pool_reports_its_hosts_and_what_the_region_may_place_on(
        sim_pool: SimProcess, link: PoolLink) -> None:
    info = _wait(link, lambda i: i.reachable and len(i.hosts) == 2)
    assert info.name == "sim-pool" and info.master_address == "127.0.0.1"
    assert [(h.address, h.master, h.live, h.enabled) for h in info.hosts] == [
        ("127.0.0.1", True, True, True), ("127.0.0.2", False, True, True)]
    assert info.capacity() == (8, 2 * 32 * GiB_MIB)  # the simulator's 4 CPUs, 32 GiB each
    assert info.largest_free_mib == 24 * GiB_MIB
    # a host with more free memory, then a host disabled: the report follows the events
    second = sim_pool.members[1].host_uuid
    metrics = sim_pool.store.field("host", second, "metrics")
    sim_pool.store.modify("host_metrics", metrics, memory_free=str(30 * 1024**3))
    assert _wait(link, lambda i: i.largest_free_mib == 30 * GiB_MIB)
    sim_pool.store.modify("host", second, enabled=False)
    info = _wait(link, lambda i: i.capacity() == (4, 32 * GiB_MIB))
    assert info.largest_free_mib == 24 * GiB_MIB  # a disabled host takes no VM


def test_an_unreachable_pool_is_reported_so_with_why(
        sim_pool: SimProcess, link: PoolLink) -> None:
    _wait(link, lambda i: i.reachable)
    for member in sim_pool.members:
        member.stop()
    sim_pool.store.expire_sessions()  # ends the blocked event.from at once
    # the call in flight fails first; the reconnection tried at once then finds no master
    info = _wait(link, lambda i: not i.reachable and "no host answers" in i.problem)
    assert "127.0.0.1" in info.problem and "127.0.0.2" in info.problem
    assert len(info.hosts) == 2  # what it had stays as last read


def test_a_re_pinned_certificate_is_taken_when_the_old_pin_is_refused(
        sim_pool: SimProcess) -> None:
    # the controller's copy of the settings: re-pinned by an operator meanwhile
    held = {"pins": {m.address: m.fingerprint for m in sim_pool.members},
            "certificates": {m.address: m.cert_pem for m in sim_pool.members}}

    def settings() -> XapiSettings:
        return XapiSettings(url=sim_pool.url().rstrip("/"), username="root",
                            password="secret", pool_uuid=_pool_uuid(sim_pool),
                            pins=dict(held["pins"]), certificates=dict(held["certificates"]))

    link = PoolLink(settings(), "sim", refresh=settings)
    link.start()
    try:
        _wait(link, lambda i: i.reachable)
        new = sim_pool.members[0].rekey()  # a planned change on the master
        sim_pool.store.expire_sessions()  # the loop connects again: the old pin is refused
        _wait(link, lambda i: not i.reachable and "presented a TLS certificate" in i.problem)
        master = sim_pool.members[0]
        held["pins"] = {**held["pins"], master.address: new}
        held["certificates"] = {**held["certificates"], master.address: master.cert_pem}
        # the next refusal asks the controller again and connects with the new pin, the
        # new certificate its trust anchor
        assert _wait(link, lambda i: i.reachable).master_address == "127.0.0.1"
        assert link.settings.pins[master.address] == new
        assert link.loop.client.certificates[master.address] == master.cert_pem
    finally:
        link.stop()
