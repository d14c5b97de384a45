"""The appliance's whole path under QEMU: the ISO installs a blank disk unattended from an
answer medium, the installed disk boots, the node joins a controller on this host by
itself and reports its hardware, and it is then upgraded through a rollout, not by
reinstalling; bad answers stop the install before any disk is written.

The guest's user network is restricted (nothing leaves it); its ways out are QEMU's
forward of 10.0.2.100:8443 to the controller's port on this host's loopback, and in,
a port of this host's loopback forwarded to the guest's sshd.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.interactive import QUESTIONS
from controller import allinone
from iso import build, qemu
from lab.release import build_next_release
from tests.e2e.region import E2ERegion

pytestmark = pytest.mark.e2e

# TCG on a loaded 2-core machine: generous safety nets, never timing checks
INSTALL_DEADLINE_S = 1500
BOOT_DEADLINE_S = 900
REPORT_DEADLINE_S = 300
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("releases")


@pytest.fixture(scope="module")
def region(libvirtd: list[int], releases: Path) -> Iterator[E2ERegion]:
    """A controller alone (the node is the guest), its certificate naming the address the
    guest reaches it at, which is also the address its rollouts give the node."""
    guest_url = f"https://{qemu.GUEST_CONTROLLER}:{qemu.GUEST_PORT}"
    with E2ERegion.admin_controller({"VAUBAN_SERVER_NAMES": qemu.GUEST_CONTROLLER,
                                     "VAUBAN_ADVERTISE_URL": guest_url,
                                     "VAUBAN_RELEASES": str(releases)}) as r:
        yield r


def _blank_disk(path: Path, size: str) -> Path:
    subprocess.run(["truncate", "-s", size, str(path)], check=True)
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def _node(region: E2ERegion, name: str) -> dict[str, Any] | None:
    nodes = json.loads(region.cli("node", "list", "--json"))
    return next((n for n in nodes if n["name"] == name), None)


def _ssh_key(path: Path) -> tuple[Path, str]:
    """A new key pair: (private key file, public key line)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path, path.with_suffix(".pub").read_text().strip()


def _upgrade_through_a_rollout(region: E2ERegion, name: str, ssh_port: int, key: Path,
                               releases: Path, tmp_path: Path) -> str:
    """Adopt the joined node into the fleet (its reported host keys pinned), roll the next
    release out to it; the version it reports then."""
    added = region.cli("node", "add", "127.0.0.1", "--port", str(ssh_port), "--name", name,
                       "--ssh-key", str(key), "--profile", "lab", "--no-rollout")
    assert f"{name} (127.0.0.1) added" in added, added
    version = build_next_release(releases, tmp_path / "next")
    out = region.cli("rollout", "run", "--upgrade", "--version", version, "--limit", name)
    assert f"version {version}" in out and "succeeded" in out, out
    return version


@pytest.mark.timeout(INSTALL_DEADLINE_S + BOOT_DEADLINE_S + REPORT_DEADLINE_S)
def test_the_iso_installs_a_node_that_joins_the_region_by_itself(
        built_iso: build.Result, region: E2ERegion, releases: Path, tmp_path: Path) -> None:
    name = f"iso-{uuid.uuid4().hex[:6]}"
    made = allinone.create_join_token(region.layout, region.token, "appliance ISO e2e")
    key, public = _ssh_key(tmp_path / "operator")
    answers = qemu.answer_medium(tmp_path / "answers.img", "\n".join([
        f'controller = "https://{qemu.GUEST_CONTROLLER}:{qemu.GUEST_PORT}"',
        f'join_token = "{made["token"]}"',
        f'ca_sha256 = "{made["ca_sha256"]}"',
        f'hostname = "{name}"',
        'disk = "auto"',
        'hardware_profile = "lab"',  # VMs under TCG: this guest has no KVM
        'timezone = "Europe/Paris"',
        f'root_ssh_keys = ["{public}"]',
    ]) + "\n")
    disk = _blank_disk(tmp_path / "disk.raw", "8G")
    with qemu.boot(built_iso.iso, tmp_path / "install", memory_mb=2048,
                   extra=(*qemu.drives(disk, answers), "-no-reboot"),
                   nic=qemu.forward_to(region.layout.port)) as console:
        console.wait_for(r"VAUBAN-INSTALL: done, rebooting", INSTALL_DEADLINE_S)
        assert console.qemu is not None
        console.qemu.wait(timeout=300)  # -no-reboot: the guest's reboot ends QEMU
    # the installed disk alone (no CD, no answers), as the server's next boot
    ssh_port = allinone.free_port()
    with qemu.boot(None, tmp_path / "installed", memory_mb=2048, extra=qemu.drives(disk),
                   nic=f"{qemu.forward_to(region.layout.port)},{qemu.ssh_forward(ssh_port)}"
                   ) as console:
        joined = console.wait_for(rf"VAUBAN-NODE: joined as {name} \(([0-9a-f-]+)\)",
                                  BOOT_DEADLINE_S)
        node_id = joined.group(1).decode()

        def reported() -> bool:
            node = _node(region, name)
            return node is not None and node["state"] == "up"
        allinone.wait_until(reported, REPORT_DEADLINE_S, f"node {name} to report up")
        shown = json.loads(region.cli("node", "show", name, "--json"))
        assert shown["id"] == node_id
        report = shown["inventory"]["qualification"]
        assert report["profile"] == "lab" and report["verdict"] in ("PASS", "WARN")
        hw = shown["inventory"]["hardware"]
        assert [d["size_bytes"] for d in hw["disks"]] == [8 * 1024 * MIB]
        # the console's banner says it too (printed before or after the first boot's line)
        console.wait_for(rf"region: +joined as {name} \({node_id}\)\n", BOOT_DEADLINE_S,
                         since_boot=True)
        shown_key = console.wait_for(r"ssh key: +ED25519 (SHA256:[A-Za-z0-9+/]{43})\n", 60,
                                     since_boot=True)
        version = _upgrade_through_a_rollout(region, name, ssh_port, key, releases, tmp_path)
        upgraded = json.loads(region.cli("node", "show", name, "--json"))
        assert upgraded["id"] == node_id and upgraded["state"] == "up"
        assert upgraded["inventory"]["agent_version"] == version
        assert upgraded["inventory"]["qualification"]["profile"] == "lab"  # kept
        [host] = json.loads(region.cli("fleet", "list", "--json"))
        assert host["host_key_sha256"] == shown_key.group(1).decode()  # what the node said
        console.wait_for(rf"Vauban node {name} - version {re.escape(version)}\n",
                         REPORT_DEADLINE_S, since_boot=True)


def test_the_installer_asks_its_questions_on_the_serial_console(
        built_iso: build.Result, tmp_path: Path) -> None:
    """The menu's "ask the questions" entry, its hotkey typed on the serial port of a UEFI
    server: each question comes on that port, a wrong answer is asked again with its
    reason, and the answers are then used; here the disk rule matches no disk, so the
    install stops before writing anything."""
    disk = _blank_disk(tmp_path / "disk.raw", "5G")
    before = _sha256(disk)
    typed = {"controller": f"https://{qemu.GUEST_CONTROLLER}:{qemu.GUEST_PORT}",
             "join_token": "vjt_" + "a" * 32, "ca_sha256": "0" * 64, "hostname": "asked",
             "disk": "serial:NO-SUCH-DISK", "hardware_profile": "lab"}
    with qemu.boot(built_iso.iso, tmp_path / "ask", uefi=True, memory_mb=2048,
                   extra=qemu.drives(disk)) as console:
        console.wait_for(r"Live system \(rescue, demo\)", BOOT_DEADLINE_S)  # GRUB's menu
        console.send(b"a")
        console.wait_for(re.escape(QUESTIONS[0].prompt) + r" \[\]: ", BOOT_DEADLINE_S)
        console.send(b"http://10.0.2.100:8443\r")
        console.wait_for(r"is not an https:// URL", REPORT_DEADLINE_S)
        for question in QUESTIONS:  # the controller's question comes again, then the rest
            if question.key in ("network.address", "network.gateway"):
                continue  # asked for static addressing only
            console.wait_for(re.escape(question.prompt) + r" \[[^\]\n]*\]: ",
                             REPORT_DEADLINE_S)
            console.send(typed.get(question.key, "").encode() + b"\r")
        console.wait_for(r"VAUBAN-INSTALL: answers accepted: node asked,", REPORT_DEADLINE_S)
        refused = console.wait_for(r"VAUBAN-INSTALL: refused: [^\n]*\n", INSTALL_DEADLINE_S)
        assert b"no disk matches the rule 'serial:NO-SUCH-DISK'" in refused.group(0), refused
    assert _sha256(disk) == before


@pytest.mark.parametrize("answers, reason", [
    ('controller = "http://10.0.2.100:8443"\njoin_token = "vjt_aaaaaaaa"\n'
     'ca_sha256 = "' + "0" * 64 + '"\nhostname = "bad"\n', "is not an https:// URL"),
])
def test_bad_answers_stop_the_install_before_the_disk_is_written(
        built_iso: build.Result, tmp_path: Path, answers: str, reason: str) -> None:
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:  # a disk that is not blank: any write would show
        f.truncate(5 * 1024 * MIB)
        f.write(b"\xa5" * MIB)
    before = _sha256(disk)
    medium = qemu.answer_medium(tmp_path / "answers.img", answers)
    with qemu.boot(built_iso.iso, tmp_path / "install", memory_mb=2048,
                   extra=(*qemu.drives(disk, medium), "-no-reboot")) as console:
        console.wait_for(r"VAUBAN-INSTALL: refused: 1 problem\(s\) with the answers\n",
                         INSTALL_DEADLINE_S)
        problem = console.wait_for(r"  - [^\n]*\n", 60).group(0)  # the problem, in words
        assert reason.encode() in problem, problem
    assert _sha256(disk) == before
