"""The ceph role on the lab: a node labelled ceph=osd gives its free disk to the region's
Ceph cluster, whose `osd tree` then shows the node's OSD up and in; a second rollout
changes nothing.

Lab nodes have no disks of their own. The test makes one (tests/lab/disks.py). The probe
leaves loop devices out of a server's disks (software devices), so the test writes the
disk into the node's qualification report as the probe writes a real free disk; the
lab's rollout variables let ceph-volume take a loop device and give the OSD a crush
weight of 0, so that the region's data stays on the cluster's own OSD.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from controller.db.models import FleetHost
from controller.db.session import make_engine
from lab import node as lab_node
from lab.node import LabNode
from tests.e2e.region import wait_for
from tests.lab.disks import LabDisk, inside, loop_disk
from tests.lab.region import LabRegion

pytestmark = pytest.mark.e2e
OSD_UP_TIMEOUT_S = 180  # a new OSD boots in seconds; a loaded 2-core machine takes longer


@pytest.fixture
def lab_disk(lab_region: LabRegion) -> Iterator[LabDisk]:
    with loop_disk(lab_region.nodes[1]) as disk:
        yield disk


def _report_free_disks(region: LabRegion, name: str, disks: list[str]) -> list[str]:
    """Write `disks` as the free disks of the host's qualification report; returns the
    ones it named before."""
    engine = make_engine(f"sqlite:///{region.layout.controller_dir / 'controller.db'}")
    try:
        with engine.begin() as conn:
            report = conn.execute(select(FleetHost.qualification)
                                  .where(FleetHost.name == name)).scalar_one()
            before = list(report.get("free_osd_disks", []))
            conn.execute(FleetHost.__table__.update().where(FleetHost.name == name)
                         .values(qualification={**report, "free_osd_disks": disks}))
        return before
    finally:
        engine.dispose()


def _mon(region: LabRegion, **command: Any) -> Any:
    assert region.ceph is not None
    with region.ceph.admin() as admin:
        ret, out, err = admin.mon_command(json.dumps({**command, "format": "json"}), b"")
    assert ret == 0, f"{command}: {err}"
    return json.loads(out) if out.strip() else None


def _node_osds(region: LabRegion, host: str) -> list[dict[str, Any]]:
    """The OSDs under crush host `host` in `ceph osd tree`."""
    tree = _mon(region, prefix="osd tree")["nodes"]
    hosts = [n for n in tree if n["type"] == "host" and n["name"] == host]
    ids = {child for h in hosts for child in h.get("children", [])}
    return [n for n in tree if n["id"] in ids]


def _rollout(region: LabRegion, host: str) -> dict[str, Any]:
    out = region.run_cli("rollout", "run", "--limit", host)
    job_id = (out.stdout + out.stderr).split("rollout ", 1)[1].split()[0].rstrip(":")
    job = region.json("rollout", "show", job_id)
    log = region.cli("rollout", "show", job_id, "--log")
    assert job["state"] == "succeeded", f"{job['error']}\n{log[-4000:]}"
    return job


def _lab_vars(region: LabRegion, **more: Any) -> dict[str, Any]:
    """Add `more` to the lab's rollout variables; returns them as they were."""
    path = region.root / "lab-vars.json"
    before = json.loads(path.read_text())
    path.write_text(json.dumps({**before, **more}))
    return dict(before)


def _remove_osds(region: LabRegion, node: LabNode) -> None:
    """Stop and forget the node's OSDs: on the node, then in the cluster."""
    for osd in _node_osds(region, node.name):
        osd_id = osd["id"]
        lab_node.run_inside(node, "systemctl", "disable", "--now", f"ceph-osd@{osd_id}")
        lab_node.run_inside(node, "rm", "-rf", f"/var/lib/ceph/osd/ceph-{osd_id}",
                            f"/etc/systemd/system/ceph-osd@{osd_id}.service.d")
        _mon(region, prefix="osd down", ids=[str(osd_id)])
        _mon(region, prefix="osd crush remove", name=f"osd.{osd_id}")
        _mon(region, prefix="auth del", entity=f"osd.{osd_id}")
        _mon(region, prefix="osd rm", ids=[str(osd_id)])
    if any(n["name"] == node.name for n in _mon(region, prefix="osd tree")["nodes"]):
        _mon(region, prefix="osd crush remove", name=node.name)


def test_a_node_labelled_ceph_osd_gets_an_osd_up_and_in_and_a_second_rollout_changes_nothing(
        lab_region: LabRegion, lab_disk: LabDisk) -> None:
    node = lab_disk.node
    vars_before = _lab_vars(lab_region, ceph_volume_allow_loop_devices=True,
                            ceph_osd_crush_initial_weight=0)
    disks_before = _report_free_disks(lab_region, node.name,
                                      [lab_disk.device.removeprefix("/dev/")])
    lab_region.cli("node", "label", node.name, "ceph=osd")
    try:
        inventory = json.loads(lab_region.cli("inventory", "--list"))
        assert inventory["ceph_osds"]["hosts"] == [node.name]
        hostvars = inventory["_meta"]["hostvars"][node.name]
        assert hostvars["ceph_osd_devices"] == [lab_disk.device]
        assert "ceph_bootstrap_osd_key" not in json.dumps(inventory)  # no secret printed

        first = _rollout(lab_region, node.name)
        assert first["hosts"][0]["changed"] > 0
        try:  # the OSD boots after its unit starts, then reports to the monitors
            wait_for(lambda: [o["status"] for o in _node_osds(lab_region, node.name)] ==
                     ["up"], OSD_UP_TIMEOUT_S, f"an OSD of {node.name} to be up")
        except AssertionError as e:
            journal = lab_node.run_inside(node, "journalctl", "--no-pager", "-n", "40",
                                          "-u", "ceph-osd@*").stdout
            raise AssertionError(f"{e}\n{journal}") from None
        (osd,) = _node_osds(lab_region, node.name)
        assert (osd["status"], osd["reweight"]) == ("up", 1.0), osd  # up and in
        assert inside(node, "systemctl", "is-active", f"ceph-osd@{osd['id']}").strip() == \
            "active"

        again = _rollout(lab_region, node.name)
        assert [(h["state"], h["changed"]) for h in again["hosts"]] == [("ok", 0)]
        assert [o["id"] for o in _node_osds(lab_region, node.name)] == [osd["id"]]
    finally:
        lab_region.cli("node", "label", node.name, "ceph-")
        _remove_osds(lab_region, node)
        _report_free_disks(lab_region, node.name, disks_before)
        (lab_region.root / "lab-vars.json").write_text(json.dumps(vars_before))
