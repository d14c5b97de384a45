"""Pure helpers of the RBD driver and the mini cluster: names, addresses, Ceph JSON, keys."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from agent.drivers.hypervisor.base import DiskSpec
from agent.drivers.storage.base import PoolUsage, StorageError
from agent.drivers.storage.localfs import LocalfsDriver
from agent.drivers.storage.rbd import cephx
from agent.drivers.storage.rbd.clusterconf import (
    ClusterInfo,
    client_caps,
    conf_text,
    health_problems,
)
from agent.drivers.storage.rbd.images import SEGMENT, nonzero_runs, qemu_rbd_opts
from agent.drivers.storage.rbd.names import (
    check_snap,
    health_summary,
    image_name,
    is_temp_image_name,
    parse_mon_host,
    pool_usage,
    root_disk_name,
    temp_image_name,
    volume_id_of,
    volume_name,
)

UUID = "6f1c0d5e-5b5e-4d8e-9a36-0d7c3f1b2a10"


def test_names() -> None:
    assert image_name(UUID) == f"img-{UUID}"
    assert root_disk_name(UUID) == f"vm-{UUID}-root"
    assert volume_name("data1") == "vol-data1"
    tmp_a, tmp_b = temp_image_name(UUID), temp_image_name(UUID)
    assert tmp_a.startswith(f"img-{UUID}.tmp-") and tmp_a != tmp_b


def test_only_temporary_image_names_are_sweepable() -> None:
    assert is_temp_image_name(temp_image_name(UUID))
    for name in (image_name(UUID), root_disk_name(UUID), volume_name("d"),
                 f"vol-{UUID}.tmp-0123abcd", f"img-{UUID}.tmp-0123", f"img-{UUID}.tmp-XYZ12345"):
        assert not is_temp_image_name(name), name


@pytest.mark.parametrize("bad", ["", "a/b", "a@b", "..", "a..b", "-x", "x" * 97, "a b"])
def test_ids_that_could_escape_a_name_are_refused(bad: str) -> None:
    with pytest.raises(StorageError, match="invalid"):
        volume_name(bad)


def test_volume_id_of() -> None:
    assert volume_id_of("vol-data1") == "data1"
    assert volume_id_of(f"img-{UUID}") is None
    assert volume_id_of("vol-") is None


def test_snapshot_names() -> None:
    assert check_snap("daily-2024.01") == "daily-2024.01"
    for bad in ("", "a@b", "a/b", "-a"):
        with pytest.raises(StorageError):
            check_snap(bad)


@pytest.mark.parametrize("mon_host, expected", [
    ("[v2:127.0.0.1:40001,v1:127.0.0.1:40002]", (("127.0.0.1", 40001),)),
    ("[v1:10.0.0.1:6789,v2:10.0.0.1:3300],[v2:10.0.0.2:3300,v1:10.0.0.2:6789]",
     (("10.0.0.1", 3300), ("10.0.0.2", 3300))),
    ("10.0.0.1:6789,10.0.0.2:6789", (("10.0.0.1", 6789), ("10.0.0.2", 6789))),
    ("10.0.0.1 10.0.0.2;mon3.example", (("10.0.0.1", 3300), ("10.0.0.2", 3300),
                                        ("mon3.example", 3300))),
    ("v1:10.0.0.1", (("10.0.0.1", 6789),)),
    ("[v2:[::1]:3300,v1:[::1]:6789]", (("::1", 3300),)),
    ("[::1]:6789", (("::1", 6789),)),
])
def test_parse_mon_host(mon_host: str, expected: tuple[tuple[str, int], ...]) -> None:
    assert parse_mon_host(mon_host) == expected


@pytest.mark.parametrize("bad", ["", "  ", "[v2:1.2.3.4:3300", "host:port"])
def test_parse_mon_host_refuses_garbage(bad: str) -> None:
    with pytest.raises(StorageError):
        parse_mon_host(bad)


def test_pool_usage_from_df() -> None:
    df = {"stats": {"total_bytes": 21474836480},
          "pools": [{"name": "vauban", "id": 1,
                     "stats": {"stored": 19, "bytes_used": 4096, "max_avail": 20096671744}},
                    {"name": "old", "id": 2, "stats": {"bytes_used": 10, "max_avail": 5}}]}
    assert pool_usage(df) == {"vauban": PoolUsage("vauban", 19, 20096671744),
                              "old": PoolUsage("old", 10, 5)}
    assert pool_usage({}) == {}


def test_health_summary() -> None:
    ok = {"status": "HEALTH_OK", "checks": {}, "mutes": []}
    assert health_summary(ok) == ("HEALTH_OK", "")
    warn = {"status": "HEALTH_WARN", "checks": {
        "OSDMAP_FLAGS": {"severity": "HEALTH_WARN", "summary": {"message": "noout flag(s) set"}},
        "A_CHECK": {"severity": "HEALTH_WARN", "summary": {"message": "first"}}}}
    assert health_summary(warn) == ("HEALTH_WARN",
                                    "A_CHECK: first; OSDMAP_FLAGS: noout flag(s) set")
    assert health_summary({"health": ok, "fsid": "x"}) == ("HEALTH_OK", "")  # `ceph status`
    assert health_summary({})[0] == "UNKNOWN"


def test_nonzero_runs() -> None:
    s = SEGMENT
    data = bytes(s) + b"x" * s + b"y" + bytes(s - 1) + bytes(2 * s) + b"z"
    assert nonzero_runs(data) == [(s, 3 * s), (5 * s, 5 * s + 1)]
    assert nonzero_runs(bytes(3 * s)) == []
    assert nonzero_runs(b"") == []
    assert nonzero_runs(b"\0\0\1\0", segment=2) == [(2, 4)]


def test_qemu_rbd_opts_carry_no_key_and_refuse_commas() -> None:
    opts = qemu_rbd_opts("vauban", "img-x.tmp-1", "vauban", (("127.0.0.1", 3300),), "sec0")
    assert "file.key-secret=sec0" in opts and "file.server.0.port=3300" in opts
    assert "key=" not in opts.replace("key-secret=", "")
    with pytest.raises(StorageError, match="unusable character"):
        qemu_rbd_opts("a,b", "img", "vauban", (("127.0.0.1", 3300),), "sec0")


def test_cephx_keys() -> None:
    key = cephx.new_key()
    assert cephx.valid_key(key) and len(base64.b64decode(key)) == 28
    assert key != cephx.new_key()
    assert not cephx.valid_key("not base64!")
    assert not cephx.valid_key(base64.b64encode(b"x" * 28).decode())
    text = cephx.keyring({"client.a": key}, {"client.a": {"mon": "profile rbd"}})
    assert text == f'[client.a]\n\tkey = {key}\n\tcaps mon = "profile rbd"\n'


def test_client_caps_name_exactly_the_pools() -> None:
    assert client_caps(("a", "b")) == {
        "mon": "profile rbd",
        "osd": "profile rbd pool=a, profile rbd pool=b",
        "mgr": "profile rbd pool=a, profile rbd pool=b",
    }


def test_health_problems() -> None:
    settled = {"health": {"status": "HEALTH_OK", "checks": {}},
               "osdmap": {"num_osds": 1, "num_up_osds": 1, "num_in_osds": 1},
               "mgrmap": {"available": True},
               "pgmap": {"num_pgs": 16, "pgs_by_state": [{"state_name": "active+clean",
                                                         "count": 16}]}}
    assert health_problems(settled, 16) == []
    assert len(health_problems(settled, 24)) == 1  # a new pool's PGs are not there yet
    peering = {**settled, "mgrmap": {"available": False},
               "pgmap": {"num_pgs": 16, "pgs_by_state": [
                   {"state_name": "active+clean", "count": 8},
                   {"state_name": "peering", "count": 8}]}}
    problems = health_problems(peering, 16)
    assert problems[0] == "mgr not available" and "8/16 PGs active+clean" in problems[1]
    down = {**settled, "osdmap": {"num_up_osds": 0, "num_in_osds": 1}}
    assert health_problems(down, 16) == ["osds up/in 0/1"]
    warn = {**settled, "health": {"status": "HEALTH_WARN", "checks": {"SLOW_OPS": {}}}}
    assert health_problems(warn, 16) == ["HEALTH_WARN (SLOW_OPS)"]


def test_cluster_info_round_trips_through_json() -> None:
    info = ClusterInfo(fsid="f", mon_host="[v2:127.0.0.1:1,v1:127.0.0.1:2]",
                       conf=Path("/x/ceph.conf"), client="vauban", key=cephx.new_key(),
                       admin_keyring=Path("/x/k"), pools=("a", "b"))
    assert ClusterInfo.from_json(info.to_json()) == info


def test_drivers_without_volumes_refuse_them(tmp_path: Path) -> None:
    store = LocalfsDriver(tmp_path)
    assert store.info().volumes is False
    with pytest.raises(StorageError, match="localfs storage does not support volumes"):
        store.create_volume("v", 1)
    with pytest.raises(StorageError, match="does not support volumes"):
        store.list_volumes()
    health = store.health()
    assert health.status == "OK" and health.pools[0].pool == "localfs"
    assert health.pools[0].max_avail_bytes > 0 and health.pools[0].used_bytes > 0
    assert store.volume_of(DiskSpec(source=tmp_path / "x", format="raw", target="vdc")) is None


@pytest.mark.parametrize("address", [None, "10.242.0.1"])
def test_a_mini_clusters_daemons_listen_on_its_one_address(address: str | None) -> None:
    """Loopback unless told: a node lab's nodes reach the cluster on the lab bridge."""
    where = address or "127.0.0.1"
    mon_host = f"[v2:{where}:40001,v1:{where}:40002]"
    conf = conf_text(Path("/c"), "fsid-1", mon_host, *([address] if address else []))
    lines = conf.splitlines()
    assert f"mon_host = {mon_host}" in lines
    assert [ln for ln in lines if ln.endswith("_addr = " + where)] == [
        f"public_addr = {where}", f"cluster_addr = {where}"]
