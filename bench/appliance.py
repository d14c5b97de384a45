"""Appliance benchmark: the ISO's build, and a server's way from a blank disk to a joined node.

    .venv/bin/python bench/appliance.py [--json F]

Run as root, after `make deps` (its Debian base is built first if not cached: minutes).
It builds this checkout's release archive and ISO (the base from the cache, the rest
anew), then under QEMU (TCG, 2 vCPUs, 2 GiB, restricted user network) times, from QEMU's
start each time:
- the live system up (the baseline: the same kernel and system, nothing installed);
- the unattended install of a blank 8 GiB disk from an answer medium, to its done line;
- the installed disk's boot, to the first boot's "joined" line and to the node reported
  up by a controller started on this host (reached through QEMU's forward only).
Each boot time is printed with its ratio to the live boot. Everything started is stopped
by its PID and the work folder removed, also on failure.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from controller import allinone  # noqa: E402
from iso import build, qemu  # noqa: E402
from lab import release  # noqa: E402

READY = r"Reached target.*Multi-User System|login:"
DEADLINE_S = 1800  # a safety net for each step on a loaded machine, not a target


def timed(step: Callable[[], object]) -> float:
    start = time.monotonic()
    step()
    return time.monotonic() - start


def live_boot(iso: Path, work: Path) -> float:
    start = time.monotonic()
    with qemu.boot(iso, work, memory_mb=2048) as console:
        console.wait_for(r"Live system \(rescue, demo\)", DEADLINE_S)
        console.send(b"l")
        console.wait_for(READY, DEADLINE_S)
        return time.monotonic() - start


def controller(root: Path) -> tuple[allinone.Layout, str]:
    lay = allinone.Layout(root, allinone.free_port())
    allinone.start_controller(lay, {"VAUBAN_SERVER_NAMES": qemu.GUEST_CONTROLLER})
    return lay, allinone.admin_token(lay)


def answers(lay: allinone.Layout, token: str, name: str) -> str:
    made = allinone.create_join_token(lay, token, "bench")
    return "\n".join([f'controller = "https://{qemu.GUEST_CONTROLLER}:{qemu.GUEST_PORT}"',
                      f'join_token = "{made["token"]}"', f'ca_sha256 = "{made["ca_sha256"]}"',
                      f'hostname = "{name}"', 'hardware_profile = "lab"']) + "\n"


def install_and_join(iso: Path, work: Path) -> dict[str, float]:
    lay, token = controller(work / "region")
    name = f"bench-{uuid.uuid4().hex[:6]}"
    try:
        medium = qemu.answer_medium(work / "answers.img", answers(lay, token, name))
        disk = work / "disk.raw"
        subprocess.run(["truncate", "-s", "8G", str(disk)], check=True)
        start = time.monotonic()
        with qemu.boot(iso, work / "install", memory_mb=2048, nic=qemu.forward_to(lay.port),
                       extra=(*qemu.drives(disk, medium), "-no-reboot")) as console:
            console.wait_for(r"VAUBAN-INSTALL: done, rebooting", DEADLINE_S)
            installed = time.monotonic() - start
            assert console.qemu is not None
            console.qemu.wait(timeout=300)
        start = time.monotonic()
        with qemu.boot(None, work / "installed", memory_mb=2048, extra=qemu.drives(disk),
                       nic=qemu.forward_to(lay.port)) as console:
            console.wait_for(rf"VAUBAN-NODE: joined as {name} ", DEADLINE_S)
            joined = time.monotonic() - start

            def up() -> bool:
                r = requests.get(f"{lay.url}/api/v1/nodes", verify=str(lay.ca_file), timeout=10,
                                 headers={"Authorization": f"Bearer {token}"})
                return r.ok and any(n["name"] == name and n["state"] == "up" for n in r.json())
            allinone.wait_until(up, DEADLINE_S, f"node {name} up", interval=1.0)
            reported = time.monotonic() - start
        return {"install_s": installed, "boot_to_joined_s": joined, "boot_to_up_s": reported}
    finally:
        lay.service("controller").stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="vauban-bench-appliance-", dir="/var/tmp"))
    try:
        wheels = release.build_release(work / "release")
        result: dict[str, Any] = {}
        result["iso_build_s"] = timed(lambda: result.update(
            iso=build.build(work / "iso", wheels, reuse=False)))
        iso = result.pop("iso").iso
        result["live_boot_s"] = live_boot(iso, work / "live")
        result.update(install_and_join(iso, work / "node"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = result["live_boot_s"]
    print(f"machine: {platform.node()}, {platform.machine()}, QEMU TCG, 2 vCPUs, 2 GiB")
    print(f"ISO build (Debian base cached):      {result['iso_build_s']:7.1f} s")
    for key, what in (("live_boot_s", "live boot to multi-user (baseline)"),
                      ("install_s", "install of a blank disk"),
                      ("boot_to_joined_s", "installed boot to joined"),
                      ("boot_to_up_s", "installed boot to node up")):
        print(f"{what + ':':<37}{result[key]:7.1f} s  {result[key] / base:5.2f}x live boot")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
