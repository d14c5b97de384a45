"""Rollout benchmark: the site playbook from the controller to 1, 5, 10 and 20 lab nodes.

    .venv/bin/python bench/rollout.py [--sizes 1,5,10,20] [--serial-sizes 1,5] [--json F]

Run as root (it builds node labs: see lab/). For each size and mode it makes a fresh lab
of that many nodes (subnet 10.247.<k>.0/24, its own name) with a controller on its
bridge, adds every node with `vauban node add --no-rollout` (host keys pinned,
qualified), then times one `vauban rollout run` to all of them, the first run on fresh
nodes (packages present, as on the appliance ISO; the wheels copied, the venv made, the
agent joined and started), and a second run that has nothing to change. "parallel" is
the controller's default (Ansible forks 20, all in one batch); "serial" sets
VAUBAN_ROLLOUT_FORKS=1. Printed per size and mode: seconds of the first and second run,
and the ratio of the first run's time to the 1-node time of the same mode (goal: 20
nodes within 2x of one); beside each, the CPU seconds of the controller's side (the
controller, ansible-playbook and its SSH clients, counted in a cpuacct cgroup the lab's
nodes are not in), which is what grows with the fleet where each node has its own CPUs.
Everything is taken down after each size, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lab import main as lab_main  # noqa: E402
from lab import region as lab_region  # noqa: E402

CPUACCT = Path("/sys/fs/cgroup/cpuacct")


class ControllerSide:
    """A cpuacct cgroup that this process (and so the controller, Ansible and its SSH
    clients, started after it joined) is in, while the lab's nodes stay outside: CPU
    seconds the controller's side spent, apart from the nodes' own work."""

    def __init__(self, name: str) -> None:
        self.path = CPUACCT / name

    def __enter__(self) -> ControllerSide:
        self.path.mkdir()
        (self.path / "cgroup.procs").write_text(f"{os.getpid()}\n")
        return self

    def cpu_s(self) -> float:
        return int((self.path / "cpuacct.usage").read_text()) / 1e9

    def __exit__(self, *exc: object) -> None:
        (CPUACCT / "cgroup.procs").write_text(f"{os.getpid()}\n")
        deadline = time.monotonic() + 120  # SSH's ControlPersist masters outlive a run
        while (self.path / "cgroup.procs").read_text().strip():
            if time.monotonic() > deadline:
                print(f"# {self.path} still holds processes: left in place", flush=True)
                return
            time.sleep(1)
        self.path.rmdir()


def _timed_rollout(region: lab_region.LabRegion, side: ControllerSide) -> tuple[float, float]:
    """Wall seconds and the controller side's CPU seconds of one `vauban rollout run`."""
    start, cpu = time.monotonic(), side.cpu_s()
    out = region.run_cli("rollout", "run", timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"rollout failed: {out.stderr.strip()}")
    return time.monotonic() - start, side.cpu_s() - cpu


def measure(size: int, mode: str, index: int) -> dict[str, Any]:
    """One fresh lab of `size` nodes, its controller, and two timed rollouts."""
    name = f"r{index}"
    state = Path("/var/tmp") / f"vauban-bench-rollout-{name}"
    shutil.rmtree(state, ignore_errors=True)
    lab = None
    try:
        lab = lab_main.up(state, size, name=name, subnet=f"10.247.{index}.0/24")
        env = {"VAUBAN_ROLLOUT_FORKS": "1"} if mode == "serial" else {}
        with ControllerSide(f"vauban-bench-rollout-{name}-{os.getpid()}") as side:
            try:
                region = lab_region.start(lab, state / "region", env=env)
                for i, node in enumerate(lab.nodes):
                    added = region.add_node(i, "--no-rollout")
                    if added.returncode != 0:
                        raise RuntimeError(f"node add {node.name}: {added.stderr.strip()}")
                first, first_cpu = _timed_rollout(region, side)
                second, second_cpu = _timed_rollout(region, side)
                nodes = region.cli("node", "list", "--json")
            finally:
                lab_region.take_down(lab)
                lab_main.down(state)  # the nodes gone, SSH masters to them end
        joined = sum(1 for n in nodes if n["state"] in ("up", "new"))
        return {"size": size, "mode": mode, "first_s": round(first, 1),
                "first_controller_cpu_s": round(first_cpu, 1), "second_s": round(second, 1),
                "second_controller_cpu_s": round(second_cpu, 1), "nodes_joined": joined}
    finally:
        if lab is not None:  # a no-op when taken down above
            lab_main.down(state)
        shutil.rmtree(state, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1,5,10,20")
    parser.add_argument("--serial-sizes", default="1,5",
                        help="sizes also run with one fork (serial takes size x one node)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    runs = [(int(s), "parallel") for s in args.sizes.split(",") if s] + \
           [(int(s), "serial") for s in args.serial_sizes.split(",") if s]
    print(f"# {platform.node()}, {platform.processor() or platform.machine()}, "
          f"{len(runs)} runs", flush=True)
    results = []
    for index, (size, mode) in enumerate(runs):
        result = measure(size, mode, index)
        results.append(result)
        print(json.dumps(result), flush=True)
    print(f"\n{'mode':<9} {'nodes':>5} {'first run':>10} {'vs 1 node':>9} "
          f"{'ctl CPU':>8} {'vs 1 node':>9} {'no-op run':>10} {'ctl CPU':>8}")
    for r in results:
        one = next((x for x in results if x["mode"] == r["mode"] and x["size"] == 1), None)
        ratio = f"{r['first_s'] / one['first_s']:.2f}x" if one else "-"
        cpu_ratio = (f"{r['first_controller_cpu_s'] / one['first_controller_cpu_s']:.2f}x"
                     if one else "-")
        print(f"{r['mode']:<9} {r['size']:>5} {r['first_s']:>9.1f}s {ratio:>9} "
              f"{r['first_controller_cpu_s']:>7.1f}s {cpu_ratio:>9} {r['second_s']:>9.1f}s "
              f"{r['second_controller_cpu_s']:>7.1f}s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
