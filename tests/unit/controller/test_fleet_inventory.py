"""Node labels and the fleet as an Ansible dynamic inventory, over a real region database."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from controller.db.models import FleetHost, Node
from controller.errors import InvalidInput
from controller.fleet.inventory import (
    check_labels,
    dynamic_inventory,
    first_mon_nodes,
    label_group,
)
from controller.region import Region

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
ANSIBLE_INVENTORY = Path(sys.executable).parent / "ansible-inventory"


def test_check_labels_accepts_well_formed_labels() -> None:
    check_labels({})
    check_labels({"rack": "r12", "zone.a": "", "gpu_model": "A100-80GB", "0": "x.y_z-1",
                  "k" * 63: "V" * 63})


@pytest.mark.parametrize(("labels", "message"), [
    ({"Rack": "r1"}, "label key 'Rack': 1 to 63 of a-z 0-9 _ . -, beginning with a letter "
                     "or digit"),
    ({"": "r1"}, "label key '': 1 to 63"),
    ({"-rack": "r1"}, "label key '-rack': 1 to 63"),
    ({"k" * 64: "r1"}, f"label key {'k' * 64!r}: 1 to 63"),
    ({"ra ck": "r1"}, "label key 'ra ck'"),
    ({"rack": "r 1"}, "label rack: value 'r 1': up to 63 of A-Z a-z 0-9 _ . -"),
    ({"rack": "v" * 64}, f"label rack: value {'v' * 64!r}: up to 63"),
    ({"rack": "r1/2"}, "label rack: value 'r1/2'"),
    ({"rack": 12}, "label rack: value '12': up to 63"),  # not a string
    ({"ok": "fine", "zone": "é"}, "label zone: value 'é'"),  # the first bad one is named
])
def test_check_labels_names_the_bad_key_or_value(labels: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidInput) as e:
        check_labels(labels)
    assert e.value.detail.startswith(message), e.value.detail


def test_check_labels_cuts_a_long_key_in_its_message() -> None:
    with pytest.raises(InvalidInput) as e:
        check_labels({"X" * 5000: "v"})
    assert len(e.value.detail) < 200


def test_label_group_is_an_ansible_identifier() -> None:
    assert label_group("rack", "r12") == "label_rack_r12"
    assert label_group("zone.a", "eu-west.1") == "label_zone_a_eu_west_1"
    assert label_group("gpu", "") == "label_gpu_"


def _fleet_host(name: str, address: str, role: str = "node", port: int = 22,
                free_disks: list[str] | None = None) -> FleetHost:
    report = None if free_disks is None else {"profile": "storage", "verdict": "PASS",
                                              "results": [], "free_osd_disks": free_disks}
    return FleetHost(name=name, address=address, port=port, user="root", host_key=HOST_KEY,
                     role=role, created_by="admin", qualification=report)


@pytest.fixture
def fleet(region: Region) -> Region:
    """Three fleet hosts: n1 (joined, labelled), n2 (not joined yet) and c1 (a controller);
    and a node that is in no fleet (joined by hand)."""
    with region.sessions() as db, db.begin():
        db.add_all([
            _fleet_host("n1", "10.0.0.21"),
            _fleet_host("n2", "10.0.0.22", port=2222),
            _fleet_host("c1", "10.0.0.10", role="controller"),
            Node(name="n1", cert_serial="01", labels={"rack": "r12", "gpu.model": "a100"}),
            Node(name="hand-made", cert_serial="02", labels={"rack": "r12"}),
        ])
    return region


def test_dynamic_inventory_groups_fleet_hosts_by_role_and_label(fleet: Region) -> None:
    with fleet.reads() as db:
        inv = dynamic_inventory(db)
        n1_id = db.query(Node.id).filter(Node.name == "n1").scalar()
    assert inv["vauban_nodes"] == {"hosts": ["n1", "n2"]}
    assert inv["vauban_controllers"] == {"hosts": ["c1"]}
    assert inv["ceph_osds"] == inv["ceph_mons"] == {"hosts": []}
    assert inv["label_rack_r12"] == {"hosts": ["n1"]}  # not the node outside the fleet
    assert inv["label_gpu_model_a100"] == {"hosts": ["n1"]}
    assert inv["all"] == {"children": ["ceph_mons", "ceph_osds", "label_gpu_model_a100",
                                       "label_rack_r12", "vauban_controllers", "vauban_nodes"]}
    hostvars = inv["_meta"]["hostvars"]
    assert sorted(hostvars) == ["c1", "n1", "n2"]
    assert hostvars["n1"] == {
        "ansible_host": "10.0.0.21", "ansible_port": 22, "ansible_user": "root",
        "vauban_role": "node", "vauban_node_id": n1_id,
        "vauban_labels": {"rack": "r12", "gpu.model": "a100"}}
    # a host whose node has not joined yet has no node and no labels
    assert hostvars["n2"] == {
        "ansible_host": "10.0.0.22", "ansible_port": 2222, "ansible_user": "root",
        "vauban_role": "node", "vauban_node_id": None, "vauban_labels": {}}
    assert hostvars["c1"]["vauban_role"] == "controller"
    json.dumps(inv)  # what the API and `vauban inventory --list` print


def test_dynamic_inventory_of_an_empty_fleet(region: Region) -> None:
    with region.reads() as db:
        assert dynamic_inventory(db) == {
            "vauban_nodes": {"hosts": []}, "vauban_controllers": {"hosts": []},
            "ceph_osds": {"hosts": []}, "ceph_mons": {"hosts": []},
            "all": {"children": ["ceph_mons", "ceph_osds", "vauban_controllers",
                                 "vauban_nodes"]},
            "_meta": {"hostvars": {}}}


@pytest.mark.skipif(not ANSIBLE_INVENTORY.exists(), reason="ansible-core is not installed")
def test_ansible_reads_the_dynamic_inventory(fleet: Region, tmp_path: Path) -> None:
    """Ansible itself, given a script printing the inventory, sees the same groups and
    variables."""
    with fleet.reads() as db:
        inv = dynamic_inventory(db)
    script = tmp_path / "inventory.py"
    script.write_text(f"#!{sys.executable}\nimport sys\n"
                      f"print({json.dumps(json.dumps(inv))} if '--list' in sys.argv else '{{}}')\n")
    script.chmod(0o700)
    out = subprocess.run([str(ANSIBLE_INVENTORY), "-i", str(script), "--list"], check=True,
                         capture_output=True, text=True, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                              "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp")})
    seen = json.loads(out.stdout)
    assert seen["vauban_nodes"]["hosts"] == ["n1", "n2"]
    assert seen["vauban_controllers"]["hosts"] == ["c1"]
    assert seen["label_rack_r12"]["hosts"] == ["n1"]
    assert seen["_meta"]["hostvars"]["n2"]["ansible_port"] == 2222
    assert seen["_meta"]["hostvars"]["n1"]["vauban_labels"] == {"rack": "r12",
                                                                "gpu.model": "a100"}


@pytest.fixture
def ceph_fleet(region: Region) -> Region:
    """s1: a node labelled ceph=osd with two free disks; s2: labelled so, qualified before
    reports listed free disks; s3: labelled ceph=mon; s4: free disks but no label; c1: a
    controller whose name a node labelled ceph=osd shares."""
    with region.sessions() as db, db.begin():
        db.add_all([
            _fleet_host("s1", "10.0.0.31", free_disks=["sdb", "nvme1n1"]),
            FleetHost(name="s2", address="10.0.0.32", host_key=HOST_KEY, created_by="admin",
                      qualification={"profile": "compute", "verdict": "PASS", "results": []}),
            _fleet_host("s3", "10.0.0.33", free_disks=["sdb"]),
            _fleet_host("s4", "10.0.0.34", free_disks=["sdb"]),
            _fleet_host("c1", "10.0.0.10", role="controller", free_disks=["sdb"]),
            Node(name="s1", cert_serial="11", labels={"ceph": "osd", "rack": "r1"}),
            Node(name="s2", cert_serial="12", labels={"ceph": "osd"}),
            Node(name="s3", cert_serial="13", labels={"ceph": "mon"}),
            Node(name="s4", cert_serial="14", labels={}),
            Node(name="c1", cert_serial="15", labels={"ceph": "osd"}),
        ])
    return region


def test_nodes_labelled_ceph_osd_are_in_ceph_osds_with_their_free_disks(
        ceph_fleet: Region) -> None:
    with ceph_fleet.reads() as db:
        inv = dynamic_inventory(db)
    assert inv["ceph_osds"] == {"hosts": ["s1", "s2"]}
    hostvars = inv["_meta"]["hostvars"]
    assert hostvars["s1"]["ceph_osd_devices"] == ["/dev/sdb", "/dev/nvme1n1"]
    assert hostvars["s2"]["ceph_osd_devices"] == []  # the role then makes no OSD
    for name in ("s3", "s4", "c1"):
        assert "ceph_osd_devices" not in hostvars[name]
    assert "ceph_bootstrap_osd_key" not in json.dumps(inv)  # what is printed holds no key


def test_nodes_labelled_ceph_mon_are_in_ceph_mons(ceph_fleet: Region) -> None:
    with ceph_fleet.sessions() as db, db.begin():
        db.add_all([_fleet_host("c2", "10.0.0.11", role="controller"),
                    Node(name="c2", cert_serial="16", labels={"ceph": "mon"}),
                    Node(name="hand-made", cert_serial="17", labels={"ceph": "mon"})])
    with ceph_fleet.reads() as db:
        inv = dynamic_inventory(db)
        # a controller or a node outside the fleet never bootstraps a cluster
        assert first_mon_nodes(db) == ["s3"]
    assert inv["ceph_mons"] == {"hosts": ["s3"]}
    assert "ceph_osd_devices" not in inv["_meta"]["hostvars"]["s3"]
