"""End to end with a real cloud image on Ceph: the Debian 12 image `make image-debian`
builds boots from an RBD clone on a tenant network with UEFI on a q35 machine, its root
disk on virtio-scsi (BIOS on i440fx with virtio-blk is what every test guest boots on),
cloud-init sets it up from its seed (host name, fixed address, the default user's name
and SSH key), a second NIC takes its address from its node's DHCP responder, the test
logs in over SSH with that key, the guest's host key pinned from what cloud-init printed
on the serial console, and what the guest agent says reaches `vauban vm show`.

On the same guest (one Debian boot under TCG is minutes): an RBD volume is attached and
mounted in it, and a snapshot taken through the CLI is made inside a freeze of the
guest's filesystems (qemu-guest-agent, through libvirt): `vauban volume show` reports it
filesystem-consistent, the guest agent says its filesystems are thawed afterwards, and
the guest writes to the volume again.

Traffic goes only to the VM's address on the test's own network, from a namespace of
the test plugged into the node's bridge for that network.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import libvirt_qemu
import pytest

from agent.drivers.network.base import bridge_name
from agent.drivers.storage.rbd.minicluster import MiniCluster
from tests.e2e.debian_guest import BOOT_DEADLINE_S, HOST_KEYS, console_text, new_ssh_key, ssh
from tests.e2e.probes import ip, probe_namespace  # noqa: F401  (a fixture)
from tests.e2e.region import E2ERegion, domain_exists, rbd_env, wait_for

pytestmark = pytest.mark.e2e

VOLUME_BYTES = 1024**3


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


def test_debian_boots_takes_its_seed_lets_its_user_in_and_its_volume_snapshots_frozen(
        region: E2ERegion, debian_image: Path, probe_namespace: tuple[str, str],  # noqa: F811
        tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    net, name, group, image = f"dnet-{tag}", f"deb-{tag}", f"dsg-{tag}", f"debian-{tag}"
    dhcp_net, vol = f"dhcp-{tag}", f"fdata-{tag}"
    key = new_ssh_key(tmp_path / "id_ed25519")
    region.cli("image", "import", str(debian_image), "--name", image, "--min-disk", "2",
               "--firmware", "bios,uefi")
    region.cli("network", "create", net, "--kind", "tenant", "--subnet", "10.78.0.0/24",
               "--gateway", "10.78.0.1")
    region.cli("network", "create", dhcp_net, "--kind", "tenant", "--subnet", "10.79.0.0/24",
               "--gateway", "10.79.0.1", "--dns", "10.79.0.53")
    region.cli("security-group", "create", group)
    region.cli("security-group", "rule", "add", group, "--direction", "ingress",
               "--protocol", "tcp", "--port", "22", "--remote-cidr", "10.78.0.200/32")
    region.cli("vm", "create", name, "--image", image, "--cpus", "1", "--memory", "768",
               "--network", f"{net}:10.78.0.10", "--network", f"{dhcp_net}:10.79.0.11,dhcp",
               "--security-group", group,
               "--ssh-key", f"{key}.pub", "--user", "ops", "--hostname", f"host-{tag}",
               "--firmware", "uefi", "--machine", "q35", "--disk-bus", "virtio-scsi")
    vm = region.vm(name)
    try:
        found = wait_for(lambda: HOST_KEYS.search(console_text(vm)), BOOT_DEADLINE_S,
                         "cloud-init to print the guest's SSH host keys on its console")
        assert found
        keys = [line.split()[:2] for line in found.group(1).splitlines() if line.strip()]
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text("".join(f"10.78.0.10 {kind} {blob}\n" for kind, blob in keys))

        ns, host_end = probe_namespace
        network = json.loads(region.cli("network", "show", net, "-o", "json"))
        ip("link", "set", host_end, "master", bridge_name(network["id"]), "up")
        ip("-n", ns, "addr", "add", "10.78.0.200/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        command = ("hostname; ip -4 -o address show scope global; cloud-init status --wait "
                   "--long; test -d /sys/firmware/efi && echo booted-by-uefi; "
                   "lsblk -dno NAME,TRAN; ip -4 -o address show dev eth1; "
                   "cat /run/systemd/netif/leases/$(cat /sys/class/net/eth1/ifindex); "
                   "sudo grep -E 'WARNING|ERROR|Traceback' /var/log/cloud-init.log | tail -n 20")

        def log_in() -> subprocess.CompletedProcess[str] | None:
            done = ssh(ns, key, known_hosts, "ops@10.78.0.10", command)
            return done if done.returncode == 0 else None
        logged_in = wait_for(log_in, BOOT_DEADLINE_S, "ops to log in over SSH with the key",
                             interval=2.0)
        lines = logged_in.stdout.splitlines()
        assert lines[0] == f"host-{tag}"
        assert "10.78.0.10/24" in logged_in.stdout and "status: done" in logged_in.stdout
        assert "booted-by-uefi" in lines
        assert re.search(r"^sda\b", logged_in.stdout, re.M)  # the root on the SCSI bus
        # eth1 was configured by DHCP: networkd keeps the lease its node's responder gave
        assert re.search(r"eth1\s+inet 10\.79\.0\.11/24", logged_in.stdout)
        lease = dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z_]+=", line))
        assert (lease.get("ADDRESS"), lease.get("ROUTER"), lease.get("DNS"),
                lease.get("SERVER_ADDRESS")) == ("10.79.0.11", "10.79.0.1", "10.79.0.53",
                                                 "10.79.0.1"), logged_in.stdout
        stranger = new_ssh_key(tmp_path / "stranger")
        assert ssh(ns, stranger, known_hosts, "ops@10.78.0.10", "true").returncode == 255

        def agent_says() -> dict[str, Any] | None:
            guest = region.vm(name).get("guest")
            addresses = [a for i in (guest or {}).get("interfaces", []) for a in i["addresses"]]
            return guest if {"10.78.0.10/24", "10.79.0.11/24"} <= set(addresses) else None
        guest = wait_for(agent_says, BOOT_DEADLINE_S,
                         "the guest agent's addresses in vauban vm show")
        assert guest is not None and guest["os_id"] == "debian"
        assert guest["os_name"] == "Debian GNU/Linux 12 (bookworm)"
        snapshot_frozen(region, name, vm["id"], vol,
                        lambda c: ssh(ns, key, known_hosts, "ops@10.78.0.10", c))
    finally:
        region.cli("vm", "delete", name, "--wait")  # releases the volume if still attached
        if any(v["name"] == vol for v in json.loads(region.cli("volume", "list", "--json"))):
            region.cli("volume", "delete", vol, "--wait")
    assert not domain_exists(vm["id"])
    region.cli("security-group", "delete", group)
    region.cli("network", "delete", net)
    region.cli("network", "delete", dhcp_net)
    region.cli("image", "delete", image)


def snapshot_frozen(region: E2ERegion, name: str, vm_id: str, vol: str,
                    guest: Callable[[str], subprocess.CompletedProcess[str]]) -> None:
    """A volume attached, mounted and written in the guest; its snapshot is made inside a
    freeze, the filesystems thawed after it, the volume written again and detached."""
    def succeeds(command: str) -> subprocess.CompletedProcess[str] | None:
        done = guest(command)
        return done if done.returncode == 0 else None

    region.cli("volume", "create", vol, "--size", "1", "--wait")
    region.cli("volume", "attach", vol, "--vm", name, "--wait")
    # the only disk of the volume's size (the root and seed disks are on other buses/sizes)
    found = wait_for(lambda: succeeds(f"lsblk -dbno NAME,SIZE | awk '$2 == {VOLUME_BYTES} "
                                      "{print $1}' | grep ."), 300,
                     "the guest to see the volume", interval=2.0)
    (device,) = found.stdout.split()
    made = guest(f"sudo mkfs.ext4 -q /dev/{device} && sudo mkdir -p /mnt/data && "
                 f"sudo mount /dev/{device} /mnt/data && echo before | sudo tee /mnt/data/f")
    assert made.returncode == 0, made.stderr

    region.cli("volume", "snapshot", vol, "s1", "--wait")

    shown = json.loads(region.cli("volume", "show", vol, "-o", "json"))
    assert shown["snapshots"] == ["s1"]
    assert shown["snapshot_consistency"] == {"s1": "filesystem"}
    assert "s1: filesystem" in region.cli("volume", "show", vol)
    assert fsfreeze_status(vm_id) == "thawed"
    wrote = guest("echo after | sudo tee /mnt/data/g && sync && cat /mnt/data/f "
                  "/mnt/data/g && touch ~/root-writable")
    assert wrote.returncode == 0, wrote.stderr
    assert wrote.stdout.split() == ["after", "before", "after"]
    assert guest("sudo umount /mnt/data").returncode == 0
    region.cli("volume", "detach", vol, "--wait")
