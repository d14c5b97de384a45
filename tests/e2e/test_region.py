"""End to end: controller and agent processes, real VMs in libvirt, driven with the CLI."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from agent.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION
from controller.pki import RegionCA, key_pem, new_key
from hardware.discover import discover
from hardware.sysfs import Root
from tests.e2e.region import (
    E2ERegion,
    console_count,
    console_has,
    domain_exists,
    is_running,
    qemu_pid,
    wait_for,
)

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT = 180  # TCG boots on a loaded 2-core machine can be slow


@pytest.fixture(scope="module")
def region(libvirtd: str, testguest_image: Path) -> Iterator[E2ERegion]:
    with E2ERegion.running(testguest_image) as r:
        yield r


def _name() -> str:
    return f"e2e-{uuid.uuid4().hex[:6]}"


def _create(region: E2ERegion, name: str, tmp_path: Path) -> dict[str, object]:
    user_data = tmp_path / "user-data"
    user_data.write_text(f"#!/bin/sh\necho user-data-ran-for-{name}\n")
    region.cli("vm", "create", name, "--image", "testguest", "--cpus", "1", "--memory", "256",
               "--user-data", str(user_data), "--wait")
    return region.vm(name)


def test_vm_lifecycle(region: E2ERegion, tmp_path: Path) -> None:
    name = _name()
    vm = _create(region, name, tmp_path)
    vm_id = str(vm["id"])
    assert vm["state"] == "running"
    assert is_running(vm_id)
    log = str(vm["console_log"])
    wait_for(lambda: console_has(log, "VAUBAN-TESTGUEST-BOOTED"), BOOT_TIMEOUT, "the boot marker")
    wait_for(lambda: console_has(log, f"vauban-testguest hostname={name}"), BOOT_TIMEOUT,
             "the hostname from the seed")
    wait_for(lambda: console_has(log, f"user-data-ran-for-{name}"), BOOT_TIMEOUT, "user-data")
    wait_for(lambda: console_has(log, "VAUBAN-TESTGUEST-READY"), BOOT_TIMEOUT, "guest ready")
    listed = json.loads(region.cli("vm", "list", "--json"))
    assert [v["state"] for v in listed if v["name"] == name] == ["running"]

    region.cli("vm", "stop", name, "--wait")
    assert not is_running(vm_id) and domain_exists(vm_id)
    assert console_has(log, "vauban-testguest powering off")  # it was a clean ACPI shutdown
    assert region.vm(name)["state"] == "stopped"

    region.cli("vm", "start", name, "--wait")
    assert is_running(vm_id)

    vm_dir = region.layout.agent_dir / "instances" / vm_id
    disk_dir = region.layout.agent_dir / "storage" / "disks" / vm_id
    assert (vm_dir / "seed.iso").exists() and disk_dir.exists()
    region.cli("vm", "delete", name, "--wait")
    assert not domain_exists(vm_id)
    assert not vm_dir.exists() and not disk_dir.exists()
    gone = region.run_cli("vm", "show", name)
    assert gone.returncode == 1 and f"instance '{name}' does not exist" in gone.stderr
    trail = json.loads(region.cli("audit", "list", "--json", "--limit", "200"))
    mine = [(e["action"], e["outcome"]) for e in trail if e["target"] == f"instance/{vm_id}"]
    assert mine[::-1] == [("instance.create", "accepted"), ("instance.stop", "accepted"),
                          ("instance.start", "accepted"), ("instance.delete", "accepted"),
                          ("instance.delete", "succeeded")]


def test_vm_reboot_reset_and_force_off(region: E2ERegion, tmp_path: Path) -> None:
    name = _name()
    vm = _create(region, name, tmp_path)
    vm_id, log = str(vm["id"]), str(vm["console_log"])
    booted, ready, off = "VAUBAN-TESTGUEST-BOOTED", "VAUBAN-TESTGUEST-READY", "powering off"
    wait_for(lambda: console_count(log, ready) == 1, BOOT_TIMEOUT, "guest ready")
    pid = qemu_pid(vm_id)

    region.cli("vm", "reboot", name, "--wait")  # an ACPI shutdown, then a start
    wait_for(lambda: console_count(log, ready) == 2, BOOT_TIMEOUT, "ready after the reboot")
    assert console_count(log, booted) == 2 and console_count(log, off) == 1
    assert region.vm(name)["state"] == "running" and is_running(vm_id)
    assert qemu_pid(vm_id) != pid

    pid = qemu_pid(vm_id)
    region.cli("vm", "reboot", name, "--force", "--wait")  # reset: no shutdown in the guest
    wait_for(lambda: console_count(log, ready) == 3, BOOT_TIMEOUT, "ready after the reset")
    assert console_count(log, booted) == 3 and console_count(log, off) == 1
    assert qemu_pid(vm_id) == pid  # the same QEMU process: reset, not a new start

    region.cli("vm", "stop", name, "--force", "--wait")  # power cut: the guest is not asked
    assert not is_running(vm_id) and region.vm(name)["state"] == "stopped"
    assert console_count(log, off) == 1
    refused = region.run_cli("vm", "reboot", name)
    assert refused.returncode == 1 and "start it instead" in refused.stderr

    region.cli("vm", "delete", name, "--wait")
    assert not domain_exists(vm_id)
    trail = json.loads(region.cli("audit", "list", "--json", "--limit", "200"))
    mine = [(e["action"], e["detail"].get("force")) for e in trail
            if e["target"] == f"instance/{vm_id}" and e["outcome"] == "accepted"]
    assert mine[::-1] == [("instance.create", None), ("instance.reboot", False),
                          ("instance.reboot", True), ("instance.stop", True),
                          ("instance.delete", None)]


def test_agent_restart_adopts_running_vm(region: E2ERegion, tmp_path: Path) -> None:
    name = _name()
    vm = _create(region, name, tmp_path)
    vm_id = str(vm["id"])
    pid = qemu_pid(vm_id)
    region.layout.service("agent").stop()
    assert is_running(vm_id) and qemu_pid(vm_id) == pid
    region.start_agent()
    assert region.vm(name)["state"] == "running"
    assert qemu_pid(vm_id) == pid  # adopted, not restarted
    wait_for(lambda: console_has(str(vm["console_log"]), "VAUBAN-TESTGUEST-READY"),
             BOOT_TIMEOUT, "guest ready")
    region.cli("vm", "stop", name, "--wait")  # and managed again
    assert not is_running(vm_id)
    region.cli("vm", "delete", name, "--wait")
    assert not domain_exists(vm_id)


def test_controller_down_and_back(region: E2ERegion, tmp_path: Path) -> None:
    name = _name()
    vm_id = str(_create(region, name, tmp_path)["id"])
    pid = qemu_pid(vm_id)
    agent_pid = region.layout.service("agent").pid()
    region.layout.service("controller").stop()
    down = region.run_cli("vm", "list")
    assert down.returncode == 1 and "cannot reach the controller" in down.stderr
    assert is_running(vm_id) and qemu_pid(vm_id) == pid
    assert agent_pid is not None and region.layout.service("agent").pid() == agent_pid
    os.kill(agent_pid, 0)  # the agent kept running without its controller

    region.start_controller()
    wait_for(lambda: region.vm(name)["state"] == "running", 60, "the node to report again")
    region.cli("vm", "delete", name, "--wait")
    assert not domain_exists(vm_id)


def test_bad_input_is_refused_and_leaves_nothing(region: E2ERegion,
                                                  testguest_image: Path) -> None:
    name = _name()
    again = region.run_cli("image", "import", str(testguest_image), "--name", "testguest")
    assert again.returncode == 1 and "an image named 'testguest' already exists" in again.stderr
    out = region.run_cli("vm", "create", name, "--image", "nope", "--cpus", "1",
                         "--memory", "256")
    assert out.returncode == 1
    assert "image 'nope' does not exist" in out.stderr
    out = region.run_cli("vm", "create", name, "--image", "testguest", "--cpus", "200",
                         "--memory", "256")
    assert out.returncode == 1
    assert "no node can host 200 vCPUs" in out.stderr
    out = region.run_cli("vm", "create", name, "--image", "testguest", "--cpus", "512",
                         "--memory", "256")
    assert out.returncode == 1
    assert "'vcpus': Input should be less than or equal to 256" in out.stderr
    out = region.run_cli("vm", "create", "Bad_Name", "--image", "testguest", "--cpus", "1",
                         "--memory", "256")
    assert out.returncode == 1 and "'name'" in out.stderr
    names = [v["name"] for v in json.loads(region.cli("vm", "list", "--json"))]
    assert name not in names and "Bad_Name" not in names


def test_a_root_disk_larger_than_the_node_has_is_refused(region: E2ERegion) -> None:
    # the size the real agent reports of its filesystem: used + available to it
    st = os.statvfs(region.layout.agent_dir / "storage")
    size_gib = (st.f_blocks - st.f_bfree + st.f_bavail) * st.f_frsize // 1024**3
    name = _name()
    out = region.run_cli("vm", "create", name, "--image", "testguest", "--cpus", "1",
                         "--memory", "256", "--disk", "65536")
    assert out.returncode == 1
    assert re.search(rf"e2e-[a-z0-9-]+ needs 65536 GiB of disk, \d+ GiB free of {size_gib} GiB "
                     r"at ratio 1\.0", out.stderr), out.stderr
    assert name not in [v["name"] for v in json.loads(region.cli("vm", "list", "--json"))]


def test_agent_api_needs_a_node_certificate_from_the_region_ca(region: E2ERegion,
                                                               tmp_path: Path) -> None:
    node_id = json.loads((region.layout.agent_dir / "node.json").read_text())["node_id"]
    url = f"{region.layout.url}/agent/v1/nodes/{node_id}/desired?wait=0"
    ca = str(region.layout.ca_file)
    agent = {PROTOCOL_HEADER: str(PROTOCOL_VERSION)}
    anonymous = requests.get(url, verify=ca, timeout=10,
                             headers={"Authorization": f"Bearer {region.token}", **agent})
    assert anonymous.status_code == 401 and "client certificate" in anonymous.json()["detail"]
    own = (str(region.layout.agent_dir / "node.pem"), str(region.layout.agent_dir / "node.key"))
    assert requests.get(url, verify=ca, cert=own, timeout=10, headers=agent).status_code == 200
    # an impostor: a client certificate for the same node id from another CA fails the handshake
    other = RegionCA(tmp_path / "other")
    other.ensure(["localhost"])
    key = new_key()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
           .sign(key, hashes.SHA256()))
    pem, _serial, _ = other.sign_node_csr(
        csr.public_bytes(serialization.Encoding.PEM).decode(), node_id)
    (tmp_path / "impostor.pem").write_bytes(pem)
    (tmp_path / "impostor.key").write_bytes(key_pem(key))
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(url, verify=ca, timeout=10,
                     cert=(str(tmp_path / "impostor.pem"), str(tmp_path / "impostor.key")))


def test_node_show_and_gpu_list_report_this_machine(region: E2ERegion) -> None:
    """The real agent sends its hardware and qualification; GPU requests meet the real inventory."""
    [node] = json.loads(region.cli("node", "list", "--json"))

    def reported() -> dict[str, Any] | None:
        shown: dict[str, Any] = json.loads(region.cli("node", "show", node["name"], "--json"))
        return shown if shown["inventory"].get("qualification") else None

    shown = wait_for(reported, 60, "the agent's hardware report")
    live = discover(Root("/"))
    assert shown["inventory"]["hardware"]["cpu"]["model"] == live.cpu.model
    assert [g["address"] for g in shown["inventory"]["gpus"]] == [g.address for g in live.gpus]
    text = region.cli("node", "show", node["name"])
    assert f"CPU:     {live.cpu.model}" in text
    report = shown["inventory"]["qualification"]
    assert f"qualification (compute): {report['verdict']}" in text
    assert {r["check"] for r in report["results"]} >= {"cpu_virtualization", "kvm_usable", "iommu"}
    gpu_rows = region.cli("gpu", "list").splitlines()
    assert gpu_rows[0].startswith("NODE") and len(gpu_rows) == 1 + len(live.gpus)
    name = _name()
    bad = region.run_cli("vm", "create", name, "--image", "testguest", "--cpus", "1",
                         "--memory", "256", "--gpu", "H100:two")
    assert bad.returncode == 2 and "'H100:two' is not MODEL or MODEL:COUNT" in bad.stderr
    if not live.gpus:
        out = region.run_cli("vm", "create", name, "--image", "testguest", "--cpus", "1",
                             "--memory", "256", "--gpu", "H100")
        assert out.returncode == 1
        assert "unknown GPU model 'H100'; models in this region: none" in out.stderr
    names = [v["name"] for v in json.loads(region.cli("vm", "list", "--json"))]
    assert name not in names
