"""A real all-in-one region for end-to-end tests: controller and agent processes on this
machine, driven with the `vauban` CLI as an operator would."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import libvirt

from controller import allinone
from controller.allinone import free_port
from controller.pki import fingerprint

if TYPE_CHECKING:
    from agent.drivers.storage.rbd.minicluster import MiniCluster

BIN = Path(sys.executable).parent


def wait_for(check: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll `check` until it returns something truthy; AssertionError naming `what` if not."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)  # polling an external process's state


@dataclass
class E2ERegion:
    root: Path
    layout: allinone.Layout
    token: str = ""
    created_vm_ids: set[str] = field(default_factory=set)
    controller_env: dict[str, str] = field(default_factory=dict)
    # the agent's settings file (agent/settings_file.py) as TOML lines; none: its defaults
    agent_settings: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, controller_env: dict[str, str] | None = None,
               agent_settings: list[str] | None = None) -> E2ERegion:
        # under /var/tmp with mode 0711: QEMU runs unprivileged and must reach the disks
        root = Path("/var/tmp") / f"vauban-e2e-{uuid.uuid4().hex[:8]}"
        root.mkdir(mode=0o711)
        # each region its own VNIs: the VXLAN devices of two regions tested on one host at
        # once would otherwise both be asked for VNI 1000
        first = 100_000 + secrets.randbelow(16_000_000)
        env = {"VAUBAN_VNI_FIRST": str(first), "VAUBAN_VNI_LAST": str(first + 9_999),
               **(controller_env or {})}
        return cls(root=root, layout=allinone.Layout(root, free_port()),
                   controller_env=env, agent_settings=agent_settings or [])

    def start_controller(self) -> None:
        allinone.start_controller(self.layout, self.controller_env)

    @classmethod
    @contextmanager
    def controller_only(cls, controller_env: dict[str, str] | None = None
                        ) -> Iterator[E2ERegion]:
        """A region of a controller process alone, answering; afterwards the process is
        stopped by its PID and the region's folder removed."""
        region = cls.create(controller_env)
        try:
            region.start_controller()
            yield region
        finally:
            region.layout.service("controller").stop()
            shutil.rmtree(region.root)

    @classmethod
    @contextmanager
    def admin_controller(cls, controller_env: dict[str, str] | None = None
                         ) -> Iterator[E2ERegion]:
        """A controller process alone with the admin's token (no node: the test brings
        its own); afterwards it is stopped by its PID and the region's folder removed."""
        region = cls.create(controller_env)
        try:
            region.start_controller()
            region.token = allinone.admin_token(region.layout)
            yield region
        finally:
            region.stop()

    @classmethod
    @contextmanager
    def running(cls, image: Path, controller_env: dict[str, str] | None = None,
                agent_settings: list[str] | None = None) -> Iterator[E2ERegion]:
        """A whole region (controller, a joined agent, `image` imported as testguest);
        afterwards its VMs, processes (by PID) and folder are gone, also when it failed
        to start part way."""
        region = cls.create(controller_env, agent_settings)
        try:
            region.start(image)
            yield region
        finally:
            region.stop()

    def start(self, image: Path) -> None:
        self.start_controller()
        self.token = allinone.admin_token(self.layout)
        allinone.join_agent(self.layout, self.token, f"e2e-{self.root.name[-8:]}")
        self.start_agent()
        self.cli("image", "import", str(image), "--name", "testguest")

    def start_agent(self) -> None:
        settings = None
        if self.agent_settings:
            settings = self.root / "agent.toml"
            settings.write_text("\n".join(self.agent_settings) + "\n")
        allinone.start_agent(self.layout, settings)
        allinone.wait_node_up(self.layout, self.token)

    def env(self) -> dict[str, str]:
        return {**os.environ, "VAUBAN_URL": self.layout.url, "VAUBAN_TOKEN": self.token,
                "VAUBAN_CA_FILE": str(self.layout.ca_file),
                "VAUBAN_CONFIG": str(self.root / "cli.json")}

    def run_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "vauban"), *args], env=self.env(), text=True,
                              capture_output=True, timeout=600, check=False)

    def cli(self, *args: str) -> str:
        """Run the CLI and expect success; the output on failure is in the assertion."""
        out = self.run_cli(*args)
        assert out.returncode == 0, f"vauban {' '.join(args)}: {out.stderr}{out.stdout}"
        return out.stdout

    def vm(self, name: str) -> dict[str, Any]:
        vm: dict[str, Any] = json.loads(self.cli("vm", "show", name, "--json"))
        self.created_vm_ids.add(vm["id"])
        return vm

    def stop(self) -> None:
        """Stop our processes by PID, remove any VM this region made, and its directory."""
        self.layout.service("agent").stop()
        self.layout.service("pool-agent").stop()  # an XCP-ng pool's agent, where a test ran one
        self.layout.service("controller").stop()
        tag = fingerprint(self.layout.ca_file.read_bytes())[:12] \
            if self.layout.ca_file.exists() else None
        conn = libvirt.open("qemu:///system")
        try:
            for secret in conn.listAllSecrets() if tag else []:
                if secret.usageID().startswith(f"vauban-{tag}-"):
                    secret.undefine()  # the Ceph key this region's agent gave libvirt
            for dom in self._domains(conn):
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
        finally:
            conn.close()
        shutil.rmtree(self.root, ignore_errors=True)


    def _domains(self, conn: libvirt.virConnect) -> list[libvirt.virDomain]:
        """This region's domains: those its tests named, and any other whose definition
        names a file under the region's folder (disks, serial log): VMs a test made
        through the UI or left when it failed part way."""
        ours = []
        for dom in conn.listAllDomains():
            try:
                if dom.UUIDString() in self.created_vm_ids or f"{self.root}/" in dom.XMLDesc():
                    ours.append(dom)
            except libvirt.libvirtError:
                continue  # undefined meanwhile
        return ours

def domain_exists(vm_id: str) -> bool:
    conn = libvirt.open("qemu:///system")
    try:
        conn.lookupByUUIDString(vm_id)
        return True
    except libvirt.libvirtError:
        return False
    finally:
        conn.close()


def is_running(vm_id: str) -> bool:
    conn = libvirt.open("qemu:///system")
    try:
        return bool(conn.lookupByUUIDString(vm_id).isActive())
    except libvirt.libvirtError:
        return False
    finally:
        conn.close()


def qemu_pid(vm_id: str) -> int:
    conn = libvirt.open("qemu:///system")
    try:
        name = conn.lookupByUUIDString(vm_id).name()
    finally:
        conn.close()
    return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())


def rbd_env(cluster: MiniCluster, volume_pools: str = "vauban") -> dict[str, str]:
    """The controller settings of a region whose storage is `cluster` (a MiniCluster):
    VM disks in pool vauban, volumes in `volume_pools` (comma-separated)."""
    return {"VAUBAN_STORAGE": "rbd", "VAUBAN_CEPH_CONF": str(cluster.info().conf),
            "VAUBAN_CEPH_KEYRING": str(cluster.client_keyring), "VAUBAN_CEPH_POOL": "vauban",
            "VAUBAN_CEPH_VOLUME_POOLS": volume_pools}


def console_has(path: str, text: str) -> bool:
    try:
        return text in Path(path).read_text(errors="replace")
    except OSError:
        return False


def console_count(path: str, text: str) -> int:
    """How many lines of the serial log hold `text` (0 when the log cannot be read)."""
    try:
        return sum(text in line for line in Path(path).read_text(errors="replace").splitlines())
    except OSError:
        return 0
