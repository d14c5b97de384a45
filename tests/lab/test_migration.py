"""Live migration between lab nodes, over libvirt's and QEMU's TLS made from the region's
PKI, checked as an operator would: a guest writing to its disk moves without losing a
write; its tenant network and its security group move with it (who may reach it still
does, who may not still does not, also from the node it moved to); and a migration that
fails leaves the VM running where it was and nothing of it on the target.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import rbd

from agent.drivers.storage.rbd.names import root_disk_name
from tests.e2e.region import wait_for
from tests.lab.region import CEPH_POOL, LabRegion
from tests.lab.test_multinode import BOOT_TIMEOUT, Made

pytestmark = pytest.mark.e2e

MOVE_TIMEOUT = 600  # TCG guests, two of them copying memory on a loaded 2-core machine
FIRST_SECTOR = 1_000_000  # far past the test guest's boot files on its 1 GiB disk
SECTOR = 512


def writer(tmp_path: Path) -> Path:
    """User-data: write `seq N` into sector FIRST_SECTOR+N of the root disk, synced, and
    print `wrote N` on the console only once the write returned, N = 1, 2, ... forever."""
    script = tmp_path / "writer"
    script.write_text(f"""#!/bin/sh
(
n=1
while :; do
    printf '%-{SECTOR - 1}s\\n' "seq $n" | dd of=/dev/vda bs={SECTOR} \\
        seek=$(({FIRST_SECTOR} + n)) conv=notrunc,fsync 2>/dev/null || exit 1
    echo "wrote $n"
    n=$((n + 1))
done
) > /dev/console 2>&1 &
""")
    return script


def written(console: str) -> int:
    """The last sequence number the guest said it wrote (0: none yet)."""
    found = [int(n) for n in re.findall(r"wrote (\d+)", console)]
    return max(found, default=0)


def sectors(region: LabRegion, vm_id: str, count: int) -> list[str]:
    """What the VM's root disk holds in the sectors of sequence numbers 1..count."""
    assert region.ceph is not None
    with region.ceph.admin() as admin, admin.open_ioctx(CEPH_POOL) as ioctx, \
            rbd.Image(ioctx, root_disk_name(vm_id), read_only=True) as disk:
        raw = disk.read((FIRST_SECTOR + 1) * SECTOR, count * SECTOR)
    return [raw[i * SECTOR:(i + 1) * SECTOR].decode(errors="replace").strip()
            for i in range(count)]


def domains_on(region: LabRegion, node: str) -> str:
    status, out = region.on_node(node, "virsh -c qemu:///system list --all --uuid")
    assert status == 0, out
    return out


def operation(region: LabRegion, op_id: str) -> dict[str, Any]:
    return json.loads(region.cli("operation", "show", op_id, "--json"))  # type: ignore[no-any-return]


def test_a_vm_writing_to_its_disk_moves_live_and_loses_no_write(
        lab_region: LabRegion, made: Made, tmp_path: Path) -> None:
    region, tag = lab_region, uuid.uuid4().hex[:6]
    source, target = region.nodes[0].name, region.nodes[1].name
    vm = made.vm(f"mig-{tag}", "--node", source, "--disk", "1",
                 "--user-data", str(writer(tmp_path)))
    wait_for(lambda: written(region.console(vm)) >= 5, BOOT_TIMEOUT,
             "the guest to write to its disk")
    region.cli("vm", "migrate", vm["name"], "--to", target, "--max-downtime", "500", "--wait")
    moved = region.vm(vm["name"])
    assert (moved["node_name"], moved["state"], moved["migrating_to"]) == \
        (target, "running", None)
    assert vm["id"] not in domains_on(region, source)
    status, xml = region.on_node(target, f"virsh -c qemu:///system dumpxml {vm['id']}")
    assert status == 0 and f"name='{CEPH_POOL}/{root_disk_name(vm['id'])}'" in xml
    # the same guest writes on, on the target (no reboot: its console there starts
    # with the writes that followed the move)
    wait_for(lambda: written(region.console(moved)) > 0, MOVE_TIMEOUT,
             "the guest to write on after the move")
    after = region.console(moved)
    assert "VAUBAN-TESTGUEST-BOOTED" not in after
    last = written(after)
    wait_for(lambda: written(region.console(moved)) > last + 3, MOVE_TIMEOUT,
             "more writes on the target")
    last = written(region.console(moved))
    assert sectors(region, vm["id"], last) == [f"seq {n}" for n in range(1, last + 1)]
    trail = json.loads(region.cli("audit", "list", "--json", "--action", "instance.migrate"))
    outcomes = [(e["outcome"], e["detail"].get("to")) for e in trail
                if e["target"] == f"instance/{vm['id']}"]
    assert ("succeeded", target) in outcomes


def test_a_failed_migration_leaves_the_vm_running_where_it_was_and_nothing_on_the_target(
        lab_region: LabRegion, made: Made) -> None:
    region, tag = lab_region, uuid.uuid4().hex[:6]
    source, target = region.nodes[0].name, region.nodes[1].name
    vm = made.vm(f"fail-{tag}", "--node", source)
    wait_for(lambda: "VAUBAN-TESTGUEST-READY" in region.console(vm), BOOT_TIMEOUT,
             "the guest to boot")
    # 1 MiB/s: the memory copy takes minutes, long enough to break it on the way
    out = region.cli("vm", "migrate", vm["name"], "--to", target, "--bandwidth", "1",
                     "--no-wait")
    op_id = out.split("operation ")[-1].strip()
    pid_file = f"/run/libvirt/qemu/vauban-{vm['name']}.pid"
    wait_for(lambda: region.on_node(target, f"test -s {pid_file}")[0] == 0, MOVE_TIMEOUT,
             "the target's incoming QEMU")
    status, out = region.on_node(target, f"kill -9 $(cat {pid_file})")
    assert status == 0, out
    wait_for(lambda: operation(region, op_id)["state"] == "failed", MOVE_TIMEOUT,
             "the migration to fail")
    assert operation(region, op_id)["error"]
    shown = region.vm(vm["name"])
    assert (shown["node_name"], shown["state"], shown["migrating_to"]) == \
        (source, "running", None)
    status, state = region.on_node(source, f"virsh -c qemu:///system domstate {vm['id']}")
    assert (status, state.strip()) == (0, "running")
    assert vm["id"] not in domains_on(region, target)
    instance_dir = region.node(target).merged / "var/lib/vauban/agent/instances" / vm["id"]
    wait_for(lambda: not instance_dir.exists(), MOVE_TIMEOUT,
             "the target to drop what it prepared")
    # and it still moves, once asked again
    region.cli("vm", "migrate", vm["name"], "--to", target, "--wait")
    assert region.vm(vm["name"])["node_name"] == target


def test_a_migration_called_off_during_its_copy_leaves_the_vm_running_where_it_was(
        lab_region: LabRegion, made: Made) -> None:
    region, tag = lab_region, uuid.uuid4().hex[:6]
    source, target = region.nodes[0].name, region.nodes[1].name
    vm = made.vm(f"off-{tag}", "--node", source)
    wait_for(lambda: "VAUBAN-TESTGUEST-READY" in region.console(vm), BOOT_TIMEOUT,
             "the guest to boot")
    # 1 MiB/s: the memory copy takes minutes, long enough to call it off on the way
    out = region.cli("vm", "migrate", vm["name"], "--to", target, "--bandwidth", "1",
                     "--no-wait")
    op_id = out.split("operation ")[-1].strip()
    wait_for(lambda: operation(region, op_id)["progress"] > 10, MOVE_TIMEOUT,
             "the copy to be under way")
    said = region.cli("vm", "migrate", vm["name"], "--cancel")
    assert "called off by admin while copying" in said
    done = operation(region, op_id)
    assert done["state"] == "failed" and f"stays on node {source}" in done["error"]
    # the source aborted the copy: the VM runs there as before, nothing on the target
    pid_file = f"/run/libvirt/qemu/vauban-{vm['name']}.pid"
    wait_for(lambda: region.on_node(target, f"test -e {pid_file}")[0] != 0, MOVE_TIMEOUT,
             "the target's incoming QEMU to end")
    wait_for(lambda: region.vm(vm["name"])["migrating_to"] is None, MOVE_TIMEOUT,
             "the target to let go")
    shown = region.vm(vm["name"])
    assert (shown["node_name"], shown["state"]) == (source, "running")
    status, state = region.on_node(source, f"virsh -c qemu:///system domstate {vm['id']}")
    assert (status, state.strip()) == (0, "running")
    status, job = region.on_node(source, f"virsh -c qemu:///system domjobinfo {vm['id']}")
    assert status == 0 and "None" in job, job  # no migration job left running
    assert vm["id"] not in domains_on(region, target)
    # and it still moves, once asked again
    region.cli("vm", "migrate", vm["name"], "--to", target, "--wait")
    assert region.vm(vm["name"])["node_name"] == target


def counter(tmp_path: Path, target: str) -> Path:
    """User-data: ping `target` once a second for as long as the guest runs; print
    `probing <target>` once eth0 has its address, `reach <target> N` at every answer and
    `miss <target> N` at every fifth unanswered ping (N counts each kind)."""
    script = tmp_path / f"count-{target}"
    script.write_text(f"""#!/bin/sh
(
until ip -4 addr show dev eth0 | grep -q inet; do sleep 1; done
echo "probing {target}"
reach=0; miss=0
while :; do
    if ping -c 1 -W 1 {target} >/dev/null 2>&1; then
        reach=$((reach + 1)); echo "reach {target} $reach"
    else
        miss=$((miss + 1)); [ $((miss % 5)) -eq 0 ] && echo "miss {target} $miss"
    fi
    sleep 1
done
) > /dev/console 2>&1 &
""")
    return script


def counted(console: str, kind: str, target: str) -> int:
    """The last count the guest printed of `kind` (reach, miss) towards `target`."""
    return max((int(n) for n in re.findall(rf"{kind} {re.escape(target)} (\d+)", console)),
               default=0)


def test_a_moved_vm_keeps_its_network_and_security_group_also_on_its_new_node(
        lab_region: LabRegion, made: Made, tmp_path: Path) -> None:
    region, tag = lab_region, uuid.uuid4().hex[:6]
    first, second, third = (n.name for n in region.nodes)
    net = made.network(f"sgm-{tag}", "10.78.0.0/24")
    group = f"sgm-{tag}"
    made.security_group(group, "--direction", "ingress", "--protocol", "icmp",
                        "--remote-cidr", "10.78.0.11/32")  # B may ping A; C may not
    a = made.vm(f"a-{tag}", "--network", f"{net['name']}:10.78.0.10",
                "--security-group", group, "--node", first)
    b = made.vm(f"b-{tag}", "--network", f"{net['name']}:10.78.0.11", "--node", second,
                "--user-data", str(counter(tmp_path, "10.78.0.10")))
    c = made.vm(f"c-{tag}", "--network", f"{net['name']}:10.78.0.12", "--node", third,
                "--user-data", str(counter(tmp_path, "10.78.0.10")))
    wait_for(lambda: counted(region.console(b), "reach", "10.78.0.10") >= 3, BOOT_TIMEOUT,
             "B to reach A across the overlay")
    wait_for(lambda: counted(region.console(c), "miss", "10.78.0.10") >= 5, BOOT_TIMEOUT,
             "C's pings to A to go unanswered")
    # A moves next to C: C's pings now stay on that node's bridge, and A's group is
    # what still stops them there
    region.cli("vm", "migrate", a["name"], "--to", third, "--wait")
    assert region.vm(a["name"])["node_name"] == third
    reached, missed = (counted(region.console(b), "reach", "10.78.0.10"),
                       counted(region.console(c), "miss", "10.78.0.10"))
    wait_for(lambda: counted(region.console(b), "reach", "10.78.0.10") >= reached + 5,
             MOVE_TIMEOUT, "B to reach A on its new node")
    wait_for(lambda: counted(region.console(c), "miss", "10.78.0.10") >= missed + 10,
             MOVE_TIMEOUT, "C to go on pinging A on its own node")
    assert counted(region.console(c), "reach", "10.78.0.10") == 0, region.console(c)
