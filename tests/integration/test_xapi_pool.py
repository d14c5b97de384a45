"""The XCP-ng pool client against the XAPI simulator over real HTTPS on loopback:
pinning, master redirects, session expiry, the event cache and int64 on the wire."""

from __future__ import annotations

import json
import subprocess
import sys
import xmlrpc.client
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.drivers.xapi.errors import (
    CertificateInvalid,
    CertificateMismatch,
    MasterRefused,
    PoolUnreachable,
    XapiError,
)
from agent.drivers.xapi.events import EventLoop, PoolCache
from agent.drivers.xapi.pool import PoolClient
from agent.drivers.xapi.transport import PinnedHTTPSConnection, format_fingerprint
from tests.xapi_sim.process import SimProcess

pytestmark = pytest.mark.integration

TiB = 1024**4
WAIT = 60.0  # an upper bound on waits for the event loop, never reached when it works


def _pins(pool: SimProcess) -> dict[str, str]:
    return {m.address: m.fingerprint for m in pool.members}


def _client(pool: SimProcess, member: int = 0, pins: dict[str, str] | None = None) -> PoolClient:
    return PoolClient(pool.url(member), "root", "secret",
                      _pins(pool) if pins is None else pins, label="sim")


@pytest.fixture
def client(sim_pool: SimProcess) -> Iterator[PoolClient]:
    c = _client(sim_pool)
    yield c
    c.close()


@pytest.fixture
def watched(sim_pool: SimProcess) -> Iterator[tuple[EventLoop, PoolCache]]:
    """An event loop on its own client, its cache read once."""
    cache = PoolCache()
    loop = EventLoop(_client(sim_pool), cache)
    loop.start()
    try:
        assert cache.wait_for(lambda c: c.valid, WAIT), cache.problem
        yield loop, cache
    finally:
        loop.stop()


def _vm(pool: SimProcess, name: str) -> str:
    return pool.store.add("VM", {"name_label": name, "resident_on": pool.master.host_uuid,
                                 "memory_static_max": 2 * 1024**3})


def test_pinned_connect_logs_in_as_vauban_and_reads_records(
        sim_pool: SimProcess, client: PoolClient) -> None:
    pools = client.call("pool.get_all_records")
    (ref, record), = pools.items()
    assert record["name_label"] == "sim-pool" and ref.startswith("OpaqueRef:")
    assert sim_pool.store.logins == [("root", "vauban")]
    assert client.call("pool.get_uuid", ref) == record["uuid"]
    assert client.call("pool.get_by_uuid", record["uuid"]) == ref
    assert "event.from" in client.call("system.listMethods")
    # refs are per session: another session names the same pool differently
    other = _client(sim_pool)
    try:
        assert list(other.call("pool.get_all_records")) != [ref]
    finally:
        other.close()


def test_wrong_password_is_refused_in_words(sim_pool: SimProcess) -> None:
    c = PoolClient(sim_pool.url(), "root", "not-the-password", _pins(sim_pool), label="sim")
    with pytest.raises(XapiError) as refused:
        c.connect()
    assert refused.value.code == "SESSION_AUTHENTICATION_FAILED"
    assert "credentials refused" in str(refused.value)
    assert "not-the-password" not in str(refused.value)


def test_changed_certificate_is_refused_before_any_request(
        sim_pool: SimProcess, client: PoolClient) -> None:
    client.call("pool.get_all")
    master = sim_pool.members[0]
    expected = master.fingerprint
    presented = master.rekey()
    sent = master.requests
    with pytest.raises(CertificateMismatch) as refused:
        client.call("pool.get_all")
    message = str(refused.value)
    assert master.address in message
    assert format_fingerprint(expected) in message and format_fingerprint(presented) in message
    assert master.requests == sent
    assert not refused.value.retryable


@pytest.mark.parametrize("kept", [True, False], ids=["certificate-kept", "fingerprint-only"])
def test_a_kept_certificate_is_the_only_trust_anchor_and_another_is_refused(
        sim_pool: SimProcess, kept: bool) -> None:
    master = sim_pool.members[0]
    c = PoolClient(sim_pool.url(), "root", "secret", _pins(sim_pool), label="sim",
                   certificates={master.address: master.cert_pem} if kept else None)
    try:
        assert c.call("pool.get_all")
        old = master.fingerprint
        new = master.rekey()
        sent = master.requests
        c.close()
        with pytest.raises(CertificateMismatch) as refused:
            c.connect()
        assert format_fingerprint(old) in str(refused.value)
        assert format_fingerprint(new) in str(refused.value)
        assert master.requests == sent
    finally:
        c.close()


@pytest.mark.parametrize("kept", [True, False], ids=["certificate-kept", "fingerprint-only"])
@pytest.mark.parametrize("change, why", [
    ({"expired": True}, "certificate has expired"),
    ({"names": "192.0.2.7"}, "IP address mismatch, certificate is not valid for '127.0.0.1'"),
], ids=["expired", "another-address"])
def test_an_invalid_pinned_certificate_is_refused_in_words_before_any_request(
        sim_pool: SimProcess, kept: bool, change: dict[str, Any], why: str) -> None:
    master = sim_pool.members[0]
    pin = master.rekey(**change)
    sent = master.requests
    c = PoolClient(sim_pool.url(), "root", "secret", {master.address: pin}, label="sim",
                   certificates={master.address: master.cert_pem} if kept else None)
    with pytest.raises(CertificateInvalid) as refused:
        c.connect()
    message = str(refused.value)
    assert why in message and format_fingerprint(pin) in message
    assert master.address in message and "renew" in message
    assert master.requests == sent


def test_host_is_slave_is_followed_to_the_pinned_master(sim_pool: SimProcess) -> None:
    c = _client(sim_pool, member=1)
    try:
        c.connect()
        assert c.address == sim_pool.members[0].address
        assert sim_pool.store.logins == [("root", "vauban")]
        assert c.call("pool.get_all")
    finally:
        c.close()


def test_host_is_slave_to_an_unpinned_master_is_refused(sim_pool: SimProcess) -> None:
    member = sim_pool.members[1]
    c = _client(sim_pool, member=1, pins={member.address: member.fingerprint})
    with pytest.raises(MasterRefused) as refused:
        c.connect()
    master = sim_pool.members[0].address
    assert f"names {master} as master, whose certificate is not pinned" in str(refused.value)
    assert sim_pool.members[0].requests == 0
    assert sim_pool.store.logins == []


def test_unreachable_master_is_a_retryable_error(sim_pool: SimProcess, client: PoolClient) -> None:
    client.call("pool.get_all")
    sim_pool.members[0].stop()
    with pytest.raises(PoolUnreachable) as down:
        client.call("pool.get_all")
    assert down.value.retryable and "unreachable" in str(down.value)


def test_session_expiry_logs_in_once_and_the_call_succeeds(
        sim_pool: SimProcess, client: PoolClient) -> None:
    client.call("pool.get_all")
    sim_pool.store.expire_sessions()
    assert client.call("pool.get_all")
    assert len(sim_pool.store.logins) == 2


def test_session_expiry_ends_event_from_one_login_and_a_full_read(
        sim_pool: SimProcess, watched: tuple[EventLoop, PoolCache]) -> None:
    _, cache = watched
    logins, reads = len(sim_pool.store.logins), cache.refetches
    vm = _vm(sim_pool, "before-expiry")
    assert cache.wait_for(lambda c: c.get("VM", vm) is not None, WAIT)
    sim_pool.store.wait_blocked(1)
    sim_pool.store.expire_sessions()
    assert cache.wait_for(lambda c: c.refetches == reads + 1, WAIT)
    assert len(sim_pool.store.logins) == logins + 1
    assert cache.valid and cache.get("VM", vm) is not None


def test_events_lost_reads_everything_again_nothing_lost_or_stale(
        sim_pool: SimProcess, watched: tuple[EventLoop, PoolCache]) -> None:
    _, cache = watched
    gone, kept = _vm(sim_pool, "to-delete"), _vm(sim_pool, "to-rename")
    assert cache.wait_for(lambda c: {gone, kept} <= set(c.all("VM")), WAIT)
    reads = cache.refetches
    store = sim_pool.store
    store.wait_blocked(1)
    with sim_pool.batch():  # one step: the loop sees EVENTS_LOST, never these changes' events
        store.remove("VM", gone)
        store.modify("VM", kept, name_label="renamed")
        added = store.add("VM", {"name_label": "added"})
        store.lose_events()
    assert cache.wait_for(lambda c: c.refetches == reads + 1, WAIT)
    vms = cache.all("VM")
    assert gone not in vms
    assert vms[kept]["name_label"] == "renamed"
    assert added in vms
    assert set(vms) == store.live("VM")


def test_event_loop_follows_vms_without_polling_them(
        sim_pool: SimProcess, watched: tuple[EventLoop, PoolCache]) -> None:
    _, cache = watched
    store = sim_pool.store
    before = dict(store.calls)
    vm = _vm(sim_pool, "watched")
    assert cache.wait_for(lambda c: (c.get("VM", vm) or {}).get("name_label") == "watched",
                          WAIT)
    record = cache.get("VM", vm)
    assert record is not None
    assert record["resident_on"] == sim_pool.master.host_uuid  # a UUID, not a ref
    assert int(record["memory_static_max"]) == 2 * 1024**3
    host = cache.get("host", sim_pool.master.host_uuid)
    assert host is not None and vm in host["resident_VMs"]
    store.modify("VM", vm, power_state="Running")
    assert cache.wait_for(lambda c: (c.get("VM", vm) or {}).get("power_state") == "Running",
                          WAIT)
    store.remove("VM", vm)
    assert cache.wait_for(lambda c: c.get("VM", vm) is None, WAIT)
    calls = {m: n - before.get(m, 0) for m, n in store.calls.items() if n != before.get(m, 0)}
    assert set(calls) == {"event.from"}, calls


def test_master_switch_is_followed_by_the_event_loop(
        sim_pool: SimProcess, watched: tuple[EventLoop, PoolCache]) -> None:
    loop, cache = watched
    reads = cache.refetches
    new_master = sim_pool.members[1]
    with sim_pool.batch():
        sim_pool.switch_master(1)
        sim_pool.store.expire_sessions()  # sessions do not survive a master change
    assert cache.wait_for(lambda c: c.refetches > reads, WAIT)
    assert loop.client.address == new_master.address
    (pool,) = cache.all("pool").values()
    assert pool["master"] == new_master.host_uuid


def test_int64_sizes_travel_as_strings_and_round_trip(
        sim_pool: SimProcess, client: PoolClient,
        watched: tuple[EventLoop, PoolCache]) -> None:
    _, cache = watched
    sr = client.call("SR.get_by_uuid", sim_pool.sr)
    ref = client.call("VDI.create", {"name_label": "big", "SR": sr, "virtual_size": 5 * TiB,
                                     "type": "user", "sharable": False, "read_only": False,
                                     "other_config": {}})
    uuid = client.call("VDI.get_uuid", ref)
    assert sim_pool.store.field("VDI", uuid, "virtual_size") == 5 * TiB
    assert client.call("VDI.get_record", ref)["virtual_size"] == str(5 * TiB)
    assert cache.wait_for(lambda c: c.get("VDI", uuid) is not None, WAIT)
    cached = cache.get("VDI", uuid)
    assert cached is not None and int(cached["virtual_size"]) == 5 * TiB
    assert cached["SR"] == sim_pool.sr
    # on the wire: a <string> of decimal digits, never an <int>/<i8>
    body = _raw_vdi_record(sim_pool, uuid)
    assert b"<value><string>5497558138880</string></value>" in body
    assert b"<i8>" not in body and b"<int>5497558138880" not in body


def _raw_vdi_record(pool: SimProcess, uuid: str) -> bytes:
    """The raw XML-RPC answer to VDI.get_record of VDI `uuid`, in a session of its own."""
    handle = _login_raw(pool)
    found = xmlrpc.client.dumps((handle, uuid), "VDI.get_by_uuid").encode()
    (result,), _ = xmlrpc.client.loads(_post(pool, "/", found))
    request = xmlrpc.client.dumps((handle, result["Value"]), "VDI.get_record").encode()
    return _post(pool, "/xmlrpc", request)


def _post(pool: SimProcess, path: str, body: bytes, content_type: str = "") -> bytes:
    """The body of the master's answer to a POST; its Content-Type checked if given."""
    master = pool.members[0]
    conn = PinnedHTTPSConnection(f"{master.address}:{pool.port}", pin=master.fingerprint,
                                 timeout=30)
    try:
        conn.request("POST", path, body, {"Content-Type": "text/xml"})
        answer = conn.getresponse()
        assert answer.status == 200
        if content_type:
            assert answer.getheader("Content-Type") == content_type
        return answer.read()
    finally:
        conn.close()


def _login_raw(pool: SimProcess) -> str:
    request = xmlrpc.client.dumps(("root", "secret", "1.0", "vauban"),
                                  "session.login_with_password").encode()
    (result,), _ = xmlrpc.client.loads(_post(pool, "/RPC2", request))
    assert result["Status"] == "Success"
    return str(result["Value"])


def _jsonrpc(pool: SimProcess, method: str, *params: Any) -> dict[str, Any]:
    call = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": 7}
    body = _post(pool, "/jsonrpc", json.dumps(call).encode(), "application/json")
    answer: dict[str, Any] = json.loads(body)
    return answer


def test_jsonrpc_carries_numbers_and_error_data(sim_pool: SimProcess) -> None:
    refused = _jsonrpc(sim_pool, "session.login_with_password", "root", "wrong", "1.0", "x")
    assert refused["error"] == {"code": 1, "message": "SESSION_AUTHENTICATION_FAILED",
                                "data": []}
    handle = _jsonrpc(sim_pool, "session.login_with_password", "root", "secret", "1.0",
                      "vauban")["result"]
    srs = _jsonrpc(sim_pool, "SR.get_all_records", handle)["result"]
    (sr,) = srs.values()
    assert sr["physical_size"] == 8 * TiB  # a JSON number
    events = _jsonrpc(sim_pool, "event.from", handle, ["sr"], "", 0.0)["result"]
    assert events["valid_ref_counts"] == {"sr": 1}
    bad = _jsonrpc(sim_pool, "event.from", handle, ["sr"], "nonsense", 0.0)
    assert bad["error"]["message"] == "EVENT_FROM_TOKEN_PARSE_FAILURE"
    assert bad["error"]["data"] == ["nonsense"]


def test_a_pool_without_jsonrpc_answers_xml_there(sim_pools: Callable[..., SimProcess]) -> None:
    # what a client probing for JSON-RPC (Xen Orchestra's) sees on an xapi without it
    pool = sim_pools(jsonrpc=False)
    request = xmlrpc.client.dumps(("root", "secret", "1.0", "vauban"),
                                  "session.login_with_password").encode()
    (result,), _ = xmlrpc.client.loads(_post(pool, "/jsonrpc", request, "text/xml"))
    assert result["Status"] == "Success"


def test_refused_credentials_leave_the_loop_running_and_say_why(sim_pool: SimProcess) -> None:
    cache = PoolCache()
    loop = EventLoop(PoolClient(sim_pool.url(), "root", "wrong", _pins(sim_pool), label="sim"),
                     cache)
    loop.start()
    try:
        assert cache.wait_for(lambda c: "credentials refused" in c.problem, WAIT)
        assert not cache.valid and sim_pool.store.logins == []
        assert loop.alive
    finally:
        loop.stop()


def test_stopped_event_loop_logs_its_session_out(sim_pool: SimProcess) -> None:
    """Regression: stop() aborted the loop's connection, then logged out over it, which
    failed silently: every stopped loop left a session open in the pool."""
    cache = PoolCache()
    loop = EventLoop(_client(sim_pool), cache)
    loop.start()
    assert cache.wait_for(lambda c: c.valid, WAIT), cache.problem
    sim_pool.store.wait_blocked()  # in event.from: stop() must abort that call
    assert sim_pool.store.sessions == 1
    loop.stop()
    assert sim_pool.store.sessions == 0


GEVENT_CLIENT = """
import json, socket, sys
from gevent import monkey
monkey.patch_all()
from agent.drivers.xapi.errors import PoolUnreachable
from agent.drivers.xapi.pool import PoolClient
args = json.loads(sys.argv[1])
client = PoolClient(args["url"], "root", "secret", args["pins"], label="sim")
answers = {"pools": len(client.call("pool.get_all"))}
client.close()
silent = socket.socket()  # accepts connections, never shakes hands
silent.bind(("127.0.0.1", 0))
silent.listen(1)
port = silent.getsockname()[1]
mute = PoolClient(f"https://127.0.0.1:{port}", "root", "secret",
                  {"127.0.0.1": args["pins"]["127.0.0.1"]}, label="mute", timeout=1)
try:
    mute.connect()
except PoolUnreachable as e:
    answers["mute"] = str(e)
print(json.dumps(answers))
"""


def test_a_fingerprint_only_client_works_under_gevent_as_the_controller_serves(
        sim_pool: SimProcess) -> None:
    """Regression: the controller's probe (gevent-patched ssl, whose
    get_server_certificate takes no timeout) failed with a TypeError; a host that never
    shakes hands is bounded by the client's timeout there too."""
    args = json.dumps({"url": sim_pool.url(), "pins": _pins(sim_pool)})
    done = subprocess.run([sys.executable, "-c", GEVENT_CLIENT, args], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    assert answers["pools"] == 1
    assert "no TLS handshake with 127.0.0.1:" in answers["mute"], answers
