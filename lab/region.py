"""A region over a lab: the controller on this machine, listening on the lab bridge,
and the lab's nodes added to it as an operator adds servers (`vauban node add`: host
key pinned, hardware qualified, the site rolled out with Ansible).

The controller gets the checkout's release archive and the lab's playbook variables
(its nodes are containers: chrony must not set the shared clock, and libvirt cannot
make cgroups there).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller import allinone
from lab.main import Lab
from lab.release import build_release

BIN = Path(sys.executable).parent
CONTROLLER_PORT = 8443
LAB_VARS = {"base_clock_owner": False, "hypervisor_libvirt_cgroup_controllers": []}


@dataclass
class LabRegion:
    lab: Lab
    layout: allinone.Layout
    token: str

    @property
    def root(self) -> Path:
        return self.layout.root

    def env(self) -> dict[str, str]:
        return {**os.environ, "VAUBAN_URL": self.layout.url, "VAUBAN_TOKEN": self.token,
                "VAUBAN_CA_FILE": str(self.layout.ca_file),
                "VAUBAN_CONFIG": str(self.root / "cli.json")}

    def run_cli(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "vauban"), *args], env=self.env(), text=True,
                              capture_output=True, timeout=timeout)

    def cli(self, *args: str, timeout: float = 900) -> Any:
        """The command's JSON output (with --json) or text; AssertionError if it fails."""
        out = self.run_cli(*args, timeout=timeout)
        if out.returncode != 0:
            raise AssertionError(f"vauban {' '.join(args)}: {out.stderr}{out.stdout}")
        return json.loads(out.stdout) if "--json" in args else out.stdout

    def add_node(self, index: int, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.run_cli(*node_add_args(self.lab, index), *extra)


def node_add_args(lab: Lab, index: int) -> list[str]:
    """`vauban node add` for the lab's node `index` (0-based), with the lab's key and
    known_hosts, as an operator would."""
    node = lab.nodes[index]
    return ["node", "add", node.ip, "--name", node.name, "--profile", "lab",
            "--ssh-key", str(lab.ssh_key), "--known-hosts", str(lab.known_hosts)]


def controller_env(lab: Lab, root: Path) -> dict[str, str]:
    """The settings a controller for `lab` needs beyond the defaults: the checkout's
    release in root/releases, and the lab's playbook variables."""
    releases = root / "releases"
    build_release(releases)
    (root / "lab-vars.json").write_text(json.dumps(LAB_VARS))
    return {"VAUBAN_RELEASES": str(releases),
            "VAUBAN_ROLLOUT_VARS": str(root / "lab-vars.json")}


def start(lab: Lab, root: Path, port: int = CONTROLLER_PORT,
          env: dict[str, str] | None = None) -> LabRegion:
    """The controller for `lab`, its state under `root` (0711, as the all-in-one's), with
    the checkout's release in its releases folder."""
    root.mkdir(mode=0o711, parents=True, exist_ok=True)
    layout = allinone.Layout(root, port, host=str(lab.host_address.ip))
    allinone.start_controller(layout, {**controller_env(lab, root), **(env or {})})
    return LabRegion(lab, layout, allinone.admin_token(layout))


def stop(region: LabRegion) -> bool:
    """Stop the controller (by its PID file); the nodes' agents stop with the lab."""
    return region.layout.service("controller").stop()


def region_root(lab: Lab) -> Path:
    return lab.state / "region"


def bring_up(lab: Lab) -> LabRegion:
    """The controller for `lab` and every lab node added and rolled out to (make lab)."""
    region = start(lab, region_root(lab))
    for i, node in enumerate(lab.nodes):
        added = region.add_node(i, "--no-rollout")
        if added.returncode != 0:
            raise RuntimeError(f"node add {node.name}: {added.stderr.strip()}")
    rollout = region.run_cli("rollout", "run")
    if rollout.returncode != 0:
        raise RuntimeError(f"rollout: {rollout.stderr.strip()}")
    return region


def describe(region: LabRegion) -> str:
    lay = region.layout
    return (f"Controller: {lay.url} (CA {lay.ca_file}), log {lay.root / 'log'}\n"
            f"  admin password in {lay.password_file}, one-time code seed in "
            f"{lay.totp_file} (readable by root only)\n"
            f"  CLI: vauban login --url {lay.url} --ca-file {lay.ca_file} "
            f"--password-file {lay.password_file} --totp-file {lay.totp_file}\n"
            f"       vauban node list; vauban rollout list; vauban inventory --list")


def take_down(lab: Lab) -> bool:
    """Stop the lab's controller if one was started; True if it was running."""
    root = region_root(lab)
    if not root.exists():
        return False
    running = allinone.Layout(root, CONTROLLER_PORT, host=str(lab.host_address.ip)).service(
        "controller").stop()
    shutil.rmtree(root)
    return running
