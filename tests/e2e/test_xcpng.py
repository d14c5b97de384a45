"""End to end: an XCP-ng pool (the XAPI simulator) enrolled with `vauban node add-xcpng`,
its agent (`hypervisor = "xapi"`) joined and running as a process, and a VM made,
stopped, reached on its console and deleted through the CLI: every step checked in the
pool itself."""

from __future__ import annotations

import hashlib
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import simple_websocket

from tests.e2e.region import BIN, E2ERegion, wait_for
from tests.e2e.test_consoles import Stream, connect, ticket
from tests.xapi_sim.fixtures import sim_pool, sim_pools
from tests.xapi_sim.process import SimProcess

__all__ = ["sim_pool", "sim_pools"]  # the fixtures used here
pytestmark = pytest.mark.e2e

UP_TIMEOUT = 120  # the agent's first report after its start
CHANGE_TIMEOUT = 180  # a VM made, stopped or deleted through the pool


@pytest.fixture
def region(libvirtd: str) -> Iterator[E2ERegion]:
    # libvirtd: the region's teardown looks there for VMs of its own (a pool makes none)
    with E2ERegion.admin_controller() as r:
        yield r


def _node(region: E2ERegion, name: str) -> dict[str, Any] | None:
    r = requests.get(f"{region.layout.url}/api/v1/nodes/{name}", timeout=30,
                     verify=str(region.layout.ca_file),
                     headers={"Authorization": f"Bearer {region.token}"})
    return r.json() if r.ok else None


def _enroll(region: E2ERegion, sim: SimProcess, *options: str) -> str:
    """`vauban node add-xcpng` for the pool; the join token it printed."""
    password = region.root / "pool-password"
    password.write_text("secret\n")
    out = region.cli("node", "add-xcpng", sim.url().rstrip("/"), "--user", "root",
                     "--fingerprint", sim.members[0].fingerprint, "--password-file",
                     str(password), "--name", "pool", "--yes", *options)
    return next(line for line in out.splitlines() if line.startswith("vbj_"))


def _start_pool_agent(region: E2ERegion, token: str) -> Path:
    """Join the pool's agent with `token` and run it (a process of the region's layout,
    stopped by its PID with the region); its data folder."""
    data = region.root / "pool-agent"
    settings = region.root / "pool-agent.toml"
    settings.write_text('hypervisor = "xapi"\n')
    (region.root / "pool-token").write_text(token)
    ca = hashlib.sha256(allinone_ca_der(region)).hexdigest()
    subprocess.run([str(BIN / "vauban-agent"), "--config", str(settings), "--data-dir",
                    str(data), "join", "--controller", region.layout.url, "--token-file",
                    str(region.root / "pool-token"), "--ca-sha256", ca, "--name", "pool"],
                   check=True, timeout=120)
    region.layout.service("pool-agent").start(
        [str(BIN / "vauban-agent"), "--config", str(settings), "--data-dir", str(data), "run"])
    return data


def allinone_ca_der(region: E2ERegion) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    cert = x509.load_pem_x509_certificate(region.layout.ca_file.read_bytes())
    return cert.public_bytes(Encoding.DER)


def _pool_vm(sim: SimProcess) -> str | None:
    """The uuid of the pool's one VM made by Vauban, if any."""
    found = [v for v in sim.store.live("VM")
             if "vauban.instance" in (sim.store.field("VM", v, "other_config") or {})]
    return found[0] if found else None


def _pool_node_up(region: E2ERegion, sim: SimProcess, *options: str) -> dict[str, Any]:
    """Enroll the pool (with `vauban node add-xcpng` `options`), run its agent; the
    pool's node once it reports the pool read."""
    _start_pool_agent(region, _enroll(region, sim, *options))
    node: dict[str, Any] = wait_for(
        lambda: (n := _node(region, "pool")) and n["state"] == "up"
        and (n["inventory"].get("pool") or {}).get("reachable") and n,
        UP_TIMEOUT, "the pool's agent to report its pool")
    return node


def test_a_pool_enrolled_runs_a_vm_through_the_cli(
        region: E2ERegion, sim_pool: SimProcess, testguest_image: Path) -> None:
    flags = {"device-model": "qemu-upstream-compat", "nx": "true", "viridian": "false"}
    sim_pool.store.add("VM", {"name_label": "Debian Bookworm 12", "is_a_template": True,
                              "platform": flags})
    node = _pool_node_up(region, sim_pool, "--template", "Debian Bookworm 12")
    pool = node["inventory"]["pool"]
    assert [h["address"] for h in pool["hosts"]] == [m.address for m in sim_pool.members]
    assert node["cpus"] == 8 and node["kvm_usable"] is False
    shown = region.cli("node", "show", "pool")
    assert "XCP-ng pool sim-pool" in shown and sim_pool.members[1].address in shown

    region.cli("image", "import", str(testguest_image), "--name", "testguest")
    region.cli("network", "create", "lan", "--kind", "provider", "--vlan", "10",
               "--physical", "eth0", "--xapi-network", "Pool-wide network",
               "--subnet", "10.77.0.0/24")
    name = f"xcp-{uuid.uuid4().hex[:6]}"
    region.cli("vm", "create", name, "--image", "testguest", "--cpus", "1", "--memory", "256",
               "--node", "pool", "--network", "lan", "--no-security-groups", "--wait")
    vm = json.loads(region.cli("vm", "show", name, "--json"))
    assert vm["state"] == "running" and vm["node_name"] == "pool"
    xapi_vm = wait_for(lambda: _pool_vm(sim_pool), CHANGE_TIMEOUT, "the VM in the pool")
    store = sim_pool.store
    assert store.field("VM", xapi_vm, "power_state") == "Running"
    assert store.field("VM", xapi_vm, "other_config")["vauban.instance"] == vm["id"]
    assert store.field("VM", xapi_vm, "platform") == flags  # a clone of the template named
    # the image's bytes reached the pool whole; the VM's root disk is a clone of them
    image = next(v for v in store.live("VDI")
                 if store.field("VDI", v, "other_config").get("vauban.complete") == "true")
    data = sim_pool.vdi_file(image).read_bytes()
    assert data[:testguest_image.stat().st_size] == testguest_image.read_bytes()
    # the region keeps the pool's uuid of it (never a ref: refs live as long as a session)
    assert wait_for(lambda: json.loads(region.cli("vm", "show", name, "--json"))[
        "hypervisor_uuid"] == xapi_vm, CHANGE_TIMEOUT, "the VM's XAPI uuid reported")
    vifs = [v for v in store.live("VIF") if store.field("VIF", v, "VM") == xapi_vm]
    assert [store.field("VIF", v, "network") for v in vifs] == [sim_pool.network]

    # its console: RFB from the pool host the VM runs on, through the controller
    ws = connect(region, ticket(region, name, "vnc")["websocket"])
    try:
        assert Stream(ws).read(12) == b"RFB 003.008\n"
    finally:
        ws.close()
    assert isinstance(ws, simple_websocket.Client)

    region.cli("vm", "stop", name, "--wait")
    assert store.field("VM", xapi_vm, "power_state") == "Halted"
    region.cli("vm", "delete", name, "--wait")
    wait_for(lambda: _pool_vm(sim_pool) is None, CHANGE_TIMEOUT, "the VM gone from the pool")
    # its disks went with it; the image stays for the next VM; no task left behind
    assert store.live("VDI") == {image}
    assert store.live("task") == set()


def test_a_pool_s_refusal_reaches_the_operator_in_words_and_the_agent_goes_on(
        region: E2ERegion, sim_pool: SimProcess, testguest_image: Path) -> None:
    _pool_node_up(region, sim_pool)
    region.cli("image", "import", str(testguest_image), "--name", "testguest")
    sim_pool.host_memory(192 * 1024**2)  # every host too small for the VM once it starts
    name = f"xcp-{uuid.uuid4().hex[:6]}"
    region.cli("vm", "create", name, "--image", "testguest", "--cpus", "1", "--memory", "256",
               "--node", "pool", "--no-wait")

    def said() -> str:
        vm = json.loads(region.cli("vm", "show", name, "--json"))
        return " ".join([vm.get("error") or ""] + [f["message"] for f in vm["failures"]])

    text = wait_for(lambda: "free" in (t := said()) and t, CHANGE_TIMEOUT,
                    "the pool's refusal reported")
    assert "no host has 256 MiB free" in text, text
    # the agent goes on: the pool stays up and the VM can be deleted through it
    assert (_node(region, "pool") or {}).get("state") == "up"
    region.cli("vm", "delete", name, "--wait")
    wait_for(lambda: _pool_vm(sim_pool) is None, CHANGE_TIMEOUT, "the VM gone from the pool")
    assert sim_pool.store.live("task") == set()
