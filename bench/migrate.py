"""Live migration benchmark on the node lab: `vauban vm migrate` against libvirt alone.

    .venv/bin/python bench/migrate.py [--memory 256,1024] [--rounds 3] [--json F]

Run as root (it builds a node lab: see lab/). It makes a lab of three nodes (subnet
10.248.0.0/24) and a region on it with its own Ceph (tests/lab/region.py:region_on, the
same as the lab tests), and for each memory size one test guest (1 vCPU, booted, idle)
on the first node. Then, `--rounds` times each way between the first two nodes:

- platform: `vauban vm migrate NAME --to NODE --wait`, wall time from the command until
  the controller shows the VM running on the target; the guest's downtime as the
  target's QEMU measured it (the audit entry of the migration).
- baseline: the same guest moved by libvirt alone between the same nodes, over the same
  TLS channel, with both agents stopped meanwhile: `virsh migrate --live --p2p --tls
  --persistent --undefinesource`, wall time of that command; downtime from
  `virsh domjobinfo --completed` on the target. It is moved back the same way, so the
  region finds it where it left it when the agents start again.

Printed per size: medians of each side, and platform/baseline ratios of time and
downtime (the platform adds its two phases: the target prepares, then the source moves
it). Everything is taken down at the end, also on failure. Exit status 0 whether the
numbers are good or not; 1 if the benchmark itself failed.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from images.testguest.build import build  # noqa: E402
from lab import main as lab_main  # noqa: E402
from tests.e2e.region import wait_for  # noqa: E402
from tests.lab.region import LabRegion, region_on  # noqa: E402

SUBNET = "10.248.0.0/24"
BOOT_TIMEOUT = 600


def virsh(region: LabRegion, node: str, command: str) -> str:
    status, out = region.on_node(node, f"virsh -c qemu:///system {command}")
    if status != 0:
        raise RuntimeError(f"virsh {command} on {node}: {out}")
    return out


def downtime_ms(jobinfo: str) -> float | None:
    found = re.search(r"Total downtime:\s+(\d+)\s+ms", jobinfo)  # virsh pads the number
    return float(found.group(1)) if found else None


def platform_move(region: LabRegion, name: str, to: str) -> tuple[float, float | None]:
    vm_id = region.vm(name)["id"]
    started = time.monotonic()
    region.cli("vm", "migrate", name, "--to", to, "--wait")
    wait_for(lambda: region.vm(name)["node_name"] == to, 120, "the VM shown on its target")
    took = time.monotonic() - started
    trail = json.loads(region.cli("audit", "list", "--json", "--action", "instance.migrate"))
    done = [e for e in trail if e["target"] == f"instance/{vm_id}"
            and e["outcome"] == "succeeded"]
    downtime = done[0]["detail"].get("downtime_ms") if done else None
    return took, float(downtime) if downtime is not None else None


def baseline_move(region: LabRegion, vm: dict[str, Any], source: str,
                  target: str) -> tuple[float, float | None]:
    address = next(n.ip for n in region.nodes if n.name == target)
    # what the target's agent would prepare (it is stopped): the VM's folder and seed
    folder = f"var/lib/vauban/agent/instances/{vm['id']}"
    there = region.node(target).merged / folder
    if not there.is_dir():
        shutil.copytree(region.node(source).merged / folder, there,
                        ignore=shutil.ignore_patterns("console.log*"))
    started = time.monotonic()
    virsh(region, source, f"migrate --live --p2p --tls --persistent --undefinesource "
                          f"{vm['id']} qemu+tls://{address}/system tcp://{address}")
    took = time.monotonic() - started
    return took, downtime_ms(virsh(region, target, f"domjobinfo --completed {vm['id']}"))


def agents(region: LabRegion, action: str, *nodes: str) -> None:
    for node in nodes:
        status, out = region.on_node(node, f"systemctl {action} vauban-agent")
        if status != 0:
            raise RuntimeError(f"systemctl {action} vauban-agent on {node}: {out}")


def measure(region: LabRegion, memory: int, rounds: int) -> dict[str, Any]:
    a, b = region.nodes[0].name, region.nodes[1].name
    name = f"bench-mig-{memory}"
    region.cli("vm", "create", name, "--image", "testguest", "--cpus", "1", "--memory",
               str(memory), "--node", a, "--wait")
    try:
        vm = region.vm(name)
        wait_for(lambda: "VAUBAN-TESTGUEST-READY" in region.console(vm), BOOT_TIMEOUT,
                 "the guest to boot")
        platform: list[tuple[float, float | None]] = []
        baseline: list[tuple[float, float | None]] = []
        for _ in range(rounds):
            platform.append(platform_move(region, name, b))
            platform.append(platform_move(region, name, a))
            agents(region, "stop", a, b)
            try:
                baseline.append(baseline_move(region, vm, a, b))
                baseline.append(baseline_move(region, vm, b, a))
            finally:
                agents(region, "start", a, b)
            wait_for(lambda: region.vm(name)["state"] == "running", 180,
                     "the region to see the VM again")
    finally:
        region.cli("vm", "delete", name, "--wait")
    return summary(memory, platform, baseline)


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def summary(memory: int, platform: list[tuple[float, float | None]],
            baseline: list[tuple[float, float | None]]) -> dict[str, Any]:
    p_time, b_time = median([t for t, _ in platform]), median([t for t, _ in baseline])
    p_down, b_down = median([d for _, d in platform]), median([d for _, d in baseline])
    result = {"memory_mib": memory, "platform_s": p_time, "baseline_s": b_time,
              "platform_downtime_ms": p_down, "baseline_downtime_ms": b_down,
              "time_ratio": p_time / b_time if p_time and b_time else None,
              "downtime_ratio": p_down / b_down if p_down and b_down else None,
              "platform_runs": platform, "baseline_runs": baseline}
    print(f"{memory} MiB: vauban vm migrate {p_time:.2f} s (downtime {p_down} ms), "
          f"virsh migrate {b_time:.2f} s (downtime {b_down} ms); ratio "
          f"{result['time_ratio'] or float('nan'):.2f}x time, "
          f"{result['downtime_ratio'] or float('nan'):.2f}x downtime", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", default="256,1024", help="guest sizes in MiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    image = build(REPO / "var/images/testguest.raw", REPO / "var/cache/testguest").image
    state = Path("/var/tmp") / f"vauban-bench-migrate-{int(time.time())}"
    results = []
    try:
        lab = lab_main.up(state, 3, name="bmig", subnet=SUBNET)
        with region_on(lab, image) as region:
            for memory in (int(m) for m in args.memory.split(",")):
                results.append(measure(region, memory, args.rounds))
    except Exception as e:
        print(f"benchmark failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        lab_main.down(state)
        shutil.rmtree(state, ignore_errors=True)  # its folder, emptied by down
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
