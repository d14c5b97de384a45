"""Real Xen under the simulator's backend: a PV guest booted with `xl` in a Xen dom0
that runs under QEMU TCG, its console read, then stopped with nothing left behind; and
end to end, a VM Vauban starts in a simulated pool booting as such a guest (XAPI's wire
faked, Xen real). One dom0 serves the module (module-scoped fixtures).

Measured here (2 cores shared with other work, 2026-12-03): the dom0 image builds in
~90 s (debootstrap and apt from the mirror; later sessions reuse the cache); dom0 writes
its ready line (xl and sshd up) 40-77 s after QEMU starts (~40 s when the machine is
idle); the first `xl create` returns in ~13 s (it copies dom0's kernel and the test
initramfs in first), the guest writes its booted line ~6 s later (its ready line would
come ~25 s after that: the test guest looks 10 s for a seed disk and 5 s for an ACPI
input, neither of which a PV guest has, so the tests stop it once booted); `xl shutdown
-w` returns in ~1 s with the domain gone.
"""

from __future__ import annotations

import socket
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.region import E2ERegion, wait_for
from tests.e2e.test_xcpng import CHANGE_TIMEOUT, _pool_node_up, _pool_vm, region
from tests.xapi_sim import dom0
from tests.xapi_sim.backend_xl import Dom0Lost, XlBackend, XlDom0
from tests.xapi_sim.fixtures import sim_pools, xen_dom0, xl_backend
from tests.xapi_sim.process import SimProcess

__all__ = ["region", "sim_pools", "xen_dom0", "xl_backend"]  # the fixtures used here
pytestmark = pytest.mark.e2e
BOOT_TIMEOUT = 600  # a PV guest in a dom0 that itself runs under TCG, on 2 shared cores

BOOTED = "VAUBAN-TESTGUEST-BOOTED"
POWERING_OFF = "vauban-testguest powering off"


def test_dom0_is_a_xen_dom0_reached_only_through_loopback(xen_dom0: XlDom0) -> None:
    info = xen_dom0.run("xl info")
    assert "xen_version            : 4.17" in info
    assert xen_dom0.run("cat /sys/hypervisor/type").strip() == "xen"
    # the forward listens on 127.0.0.1 only: another loopback address finds nothing
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", xen_dom0.port), timeout=10).close()


def test_a_lost_ssh_connection_is_made_again_and_a_command_it_cut_is_named(
        xen_dom0: XlDom0) -> None:
    # killing the sshd process that serves the command ends the connection under it
    with pytest.raises(Dom0Lost, match=r"ended under `kill -9 \$PPID`.* QEMU \(pid \d+\) "
                                       "still runs; dom0's console ends with"):
        xen_dom0.run("kill -9 $PPID")
    assert xen_dom0.run("cat /sys/hypervisor/type").strip() == "xen"  # a new connection
    # a read cut the first time is run again on a new connection
    cut_once = "if mkdir /run/vauban-cut-once 2>/dev/null; then kill -9 $PPID; fi; echo read"
    try:
        assert xen_dom0.run(cut_once, retry=True) == "read\n"
    finally:
        xen_dom0.run("rmdir /run/vauban-cut-once")


def test_destroy_stops_a_running_guest_at_once(xl_backend: XlBackend) -> None:
    name = str(uuid.uuid4())
    xl_backend.create(name, memory_mib=128, vcpus=1)
    try:
        xl_backend.wait_console(name, BOOTED)
    finally:
        xl_backend.destroy(name)
    assert xl_backend.state(name) == "halted"
    assert POWERING_OFF not in xl_backend.console_log(name)
    assert xl_backend.domains() == []


def test_a_killed_builds_folder_is_removed_without_deleting_through_its_bind_mounts(
        tmp_path: Path) -> None:
    # a build killed while its chroot had the host's /dev bound in leaves that mount
    outside = tmp_path / "host-dev"
    outside.mkdir()
    (outside / "node").write_text("keep me")
    stale = tmp_path / "cache" / "0123456789abcdef.building-1"
    (stale / "root/dev").mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(outside), str(stale / "root/dev")], check=True)
    try:
        dom0._remove_tree(stale)
    finally:
        subprocess.run(["umount", "-l", str(stale / "root/dev")], check=False,
                       capture_output=True)
    assert not stale.exists()
    assert (outside / "node").read_text() == "keep me"


def test_a_pool_vm_boots_a_real_xen_guest(
        region: E2ERegion, sim_pools: Callable[..., SimProcess], xl_backend: XlBackend,
        testguest_image: Path) -> None:
    """XAPI's wire is the simulator's, the guest is real: the VM Vauban starts in the pool
    is a PV guest that `xl create` boots in a Xen dom0 (running under QEMU TCG here), that
    shuts down cleanly when stopped (the backend's `xl shutdown -w`) and leaves no domain
    once deleted."""
    sim = sim_pools(xl=xl_backend)
    _pool_node_up(region, sim)
    region.cli("image", "import", str(testguest_image), "--name", "testguest")
    name = f"xen-{uuid.uuid4().hex[:6]}"
    region.cli("vm", "create", name, "--image", "testguest", "--cpus", "1", "--memory", "256",
               "--node", "pool", "--wait")
    xapi_vm = wait_for(lambda: _pool_vm(sim), CHANGE_TIMEOUT, "the VM in the pool")
    (guest,) = [d for d in xl_backend.domains() if d.name == xapi_vm]
    assert (guest.memory_mib, guest.vcpus, guest.state) == (256, 1, "running")
    assert BOOTED in xl_backend.wait_console(xapi_vm, BOOTED, BOOT_TIMEOUT)
    region.cli("vm", "stop", name, "--wait")
    assert xl_backend.state(xapi_vm) == "halted"
    assert POWERING_OFF in xl_backend.console_log(xapi_vm)  # shut down, not forced off
    region.cli("vm", "delete", name, "--wait")
    wait_for(lambda: _pool_vm(sim) is None, CHANGE_TIMEOUT, "the VM gone from the pool")
    assert xl_backend.domains() == []
