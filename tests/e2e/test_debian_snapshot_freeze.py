"""End to end on Ceph with a real guest agent: the Debian 12 image boots from an RBD clone,
an RBD volume is attached and mounted in it, and a snapshot taken through the CLI is
made inside a freeze of the guest's filesystems (qemu-guest-agent, through libvirt):
`vauban volume show` reports it filesystem-consistent, the guest agent says its
filesystems are thawed afterwards, and the guest writes to the volume again.

Traffic goes only to the VM's address on the test's own network, from a namespace of
the test plugged into the node's bridge for that network.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import libvirt_qemu
import pytest

from agent.drivers.network.base import bridge_name
from agent.drivers.storage.rbd.minicluster import MiniCluster
from tests.e2e.debian_guest import BOOT_DEADLINE_S, HOST_KEYS, console_text, new_ssh_key, ssh
from tests.e2e.probes import ip, probe_namespace  # noqa: F401  (a fixture)
from tests.e2e.region import E2ERegion, domain_exists, rbd_env, wait_for

pytestmark = pytest.mark.e2e

ADDRESS = "10.79.0.10"
PROBE = "10.79.0.200"


@pytest.fixture(scope="module")
def region(libvirtd: list[int], testguest_image: Path,
           ceph_minicluster: MiniCluster) -> Iterator[E2ERegion]:
    with E2ERegion.running(testguest_image, rbd_env(ceph_minicluster)) as r:
        yield r


def fsfreeze_status(vm_id: str) -> str:
    """What the guest agent says of its filesystems: "thawed" or "frozen"."""
    conn = libvirt.open("qemu:///system")
    try:
        dom = conn.lookupByUUIDString(vm_id)
        answer = libvirt_qemu.qemuAgentCommand(dom, '{"execute": "guest-fsfreeze-status"}',
                                               30, 0)
        return str(json.loads(answer)["return"])
    finally:
        conn.close()


def test_a_snapshot_of_a_debian_guests_volume_is_filesystem_consistent(
        region: E2ERegion, debian_image: Path, probe_namespace: tuple[str, str],  # noqa: F811
        tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    net, name, group, image = f"fnet-{tag}", f"frz-{tag}", f"fsg-{tag}", f"debian-{tag}"
    vol = f"fdata-{tag}"
    key = new_ssh_key(tmp_path / "id_ed25519")
    region.cli("image", "import", str(debian_image), "--name", image, "--min-disk", "2")
    region.cli("network", "create", net, "--kind", "tenant", "--subnet", "10.79.0.0/24",
               "--gateway", "10.79.0.1")
    region.cli("security-group", "create", group)
    region.cli("security-group", "rule", "add", group, "--direction", "ingress",
               "--protocol", "tcp", "--port", "22", "--remote-cidr", f"{PROBE}/32")
    region.cli("vm", "create", name, "--image", image, "--cpus", "1", "--memory", "768",
               "--network", f"{net}:{ADDRESS}", "--security-group", group,
               "--ssh-key", f"{key}.pub", "--user", "ops", "--hostname", f"host-{tag}")
    vm = region.vm(name)
    try:
        found = wait_for(lambda: HOST_KEYS.search(console_text(vm)), BOOT_DEADLINE_S,
                         "cloud-init to print the guest's SSH host keys on its console")
        keys = [line.split()[:2] for line in found.group(1).splitlines() if line.strip()]
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text("".join(f"{ADDRESS} {kind} {blob}\n" for kind, blob in keys))
        ns, host_end = probe_namespace
        network = json.loads(region.cli("network", "show", net, "-o", "json"))
        ip("link", "set", host_end, "master", bridge_name(network["id"]), "up")
        ip("-n", ns, "addr", "add", f"{PROBE}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")

        def guest(command: str) -> subprocess.CompletedProcess[str]:
            return ssh(ns, key, known_hosts, f"ops@{ADDRESS}", command)

        def succeeds(command: str) -> subprocess.CompletedProcess[str] | None:
            done = guest(command)
            return done if done.returncode == 0 else None

        wait_for(lambda: succeeds("cloud-init status --wait"), BOOT_DEADLINE_S,
                 "ops to log in over SSH with the key", interval=2.0)
        # the guest agent answers (what it says reaches vm show) before it is asked to freeze
        wait_for(lambda: (region.vm(name).get("guest") or {}).get("os_id") == "debian",
                 BOOT_DEADLINE_S, "the guest agent to answer")

        region.cli("volume", "create", vol, "--size", "1", "--wait")
        region.cli("volume", "attach", vol, "--vm", name, "--wait")
        wait_for(lambda: succeeds("test -b /dev/vdc"), 300, "the guest to see the volume",
                 interval=2.0)
        made = guest("sudo mkfs.ext4 -q /dev/vdc && sudo mkdir -p /mnt/data && "
                     "sudo mount /dev/vdc /mnt/data && echo before | sudo tee /mnt/data/f")
        assert made.returncode == 0, made.stderr

        region.cli("volume", "snapshot", vol, "s1", "--wait")

        shown = json.loads(region.cli("volume", "show", vol, "-o", "json"))
        assert shown["snapshots"] == ["s1"]
        assert shown["snapshot_consistency"] == {"s1": "filesystem"}
        assert "s1: filesystem" in region.cli("volume", "show", vol)
        assert fsfreeze_status(vm["id"]) == "thawed"
        wrote = guest("echo after | sudo tee /mnt/data/g && sync && cat /mnt/data/f "
                      "/mnt/data/g && touch ~/root-writable")
        assert wrote.returncode == 0, wrote.stderr
        assert wrote.stdout.split() == ["after", "before", "after"]

        assert guest("sudo umount /mnt/data").returncode == 0
        region.cli("volume", "detach", vol, "--wait")
    finally:
        region.cli("vm", "delete", name, "--wait")  # releases the volume if still attached
        if any(v["name"] == vol for v in json.loads(region.cli("volume", "list", "--json"))):
            region.cli("volume", "delete", vol, "--wait")
    assert not domain_exists(vm["id"])
    region.cli("security-group", "delete", group)
    region.cli("network", "delete", net)
    region.cli("image", "delete", image)
