"""Live migration between lab nodes, over libvirt's and QEMU's TLS made from the region's
PKI, checked as an operator would: a guest writing to its disk moves without losing a
write, and a migration that fails leaves the VM running where it was and nothing of it
on the target.
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
