"""HA benchmark on the node lab: from a node's loss to its HA VMs running elsewhere.

    .venv/bin/python bench/ha.py [--vms 2] [--rounds 2] [--json F]

Run as root (it builds a node lab: see lab/). It makes a lab of three nodes (subnet
10.249.0.0/24), each with its IPMI BMC, and a region on it with its own Ceph
(tests/lab/region.py:region_on, as the lab tests: node down after 15 s, storage heartbeat
stale after 15 s). Each round puts `--vms` HA test guests on the third node, waits until
they have booted, then cuts that node's power (every process of it killed at once, as
a power loss) and times, from the cut:

- detection: until the controller records the node lost (audit `node.lost`),
- fencing: from then until the node is confirmed off through its BMC and cut off from
  Ceph (the last `node.fence` step),
- restart: from then until every HA guest has booted again on another node (its serial
  console says so),

against a baseline measured on the same lab in the same run: one plain
`vauban vm create --wait` of the same guest until it has booted (a restart is that, on
another node). Printed per round: the three phases, the total, and the restart's ratio to
the baseline; the goal is a total of at most 30 s (Proxmox ~2 min, XCP-ng's 60 s default,
Harvester 5 min). The node is recovered and powered on through its BMC after each round.
Everything is taken down at the end, also on failure. Exit status 0 whether the numbers
are good or not; 1 if the benchmark itself failed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from images.testguest.build import build  # noqa: E402
from lab import bmc as lab_bmc  # noqa: E402
from lab import main as lab_main  # noqa: E402
from lab import node as lab_node  # noqa: E402
from tests.e2e.region import wait_for  # noqa: E402
from tests.lab.region import NODE_UP_TIMEOUT_S, LabRegion, region_on  # noqa: E402

SUBNET = "10.249.0.0/24"
BOOT_TIMEOUT = 600
READY = "VAUBAN-TESTGUEST-READY"


def booted_baseline(region: LabRegion, node: str) -> float:
    """Seconds of a plain create until the guest has booted, on `node`."""
    name = f"bench-base-{int(time.time())}"
    started = time.monotonic()
    region.cli("vm", "create", name, "--image", "testguest", "--cpus", "1", "--memory",
               "256", "--node", node, "--wait")
    wait_for(lambda: READY in region.console(region.vm(name)), BOOT_TIMEOUT, "boot")
    took = time.monotonic() - started
    region.cli("vm", "delete", name, "--wait")
    return took


def audit_times(region: LabRegion, action: str, target: str) -> list[datetime]:
    trail = json.loads(region.cli("audit", "list", "--json", "--action", action))
    return sorted(datetime.fromisoformat(e["at"]) for e in trail if e["target"] == target)


def fencing_steps(region: LabRegion, target: str, since: datetime) -> list[str]:
    """The fencing steps audited for `target` since `since`, in order: each one's time
    after `since`, step, outcome and reason (what a slow fencing spent its time on)."""
    trail = json.loads(region.cli("audit", "list", "--json", "--action", "node.fence"))
    steps = sorted((datetime.fromisoformat(e["at"]), e) for e in trail
                   if e["target"] == target and datetime.fromisoformat(e["at"]) >= since)
    return [f"+{(at - since).total_seconds():.1f} s {e['detail'].get('step')} {e['outcome']}"
            + (f" ({e['detail']['reason']})" if e["detail"].get("reason") else "")
            for at, e in steps]


def since(path: Path, start: int) -> list[str]:
    """The lines written to `path` since byte `start` (none if it does not exist)."""
    if not path.exists():
        return []
    with path.open("rb") as f:
        f.seek(start)
        return f.read().decode(errors="replace").splitlines()


def fencing_log(log_file: Path, start: int, node: str) -> list[str]:
    """The controller's log lines since byte `start` on `node`'s loss and fencing (with
    their times, as the controller logged them)."""
    return [line for line in since(log_file, start)
            if f"node {node}" in line and any(word in line for word in
                                               ("lost", "fenc", "power", "BMC", "Ceph"))]


def set_bmc(region: LabRegion, name: str) -> None:
    node = region.node(name)
    address, port, user, password = lab_bmc.credentials(node)
    secret = region.root / f"bmc-{name}"
    secret.write_text(password)
    secret.chmod(0o600)
    region.cli("node", "bmc", "set", name, "--address", address, "--port", str(port),
               "--user", user, "--password-file", str(secret))


def one_round(region: LabRegion, count: int, number: int) -> dict[str, Any]:
    assert region.lab is not None
    victim = region.nodes[2]
    names = [f"bench-ha-{number}-{i}" for i in range(count)]
    for name in names:
        region.cli("vm", "create", name, "--image", "testguest", "--cpus", "1", "--memory",
                   "256", "--node", victim.name, "--ha", "--wait")
    for name in names:
        wait_for(lambda n=name: READY in region.console(region.vm(n)), BOOT_TIMEOUT, "boot")
    node_id = region.json("node", "show", victim.name)["id"]
    log_file = region.layout.service("controller").logfile
    log_from = log_file.stat().st_size if log_file.exists() else 0
    calls = lab_bmc.folder(victim) / "calls.log"
    calls_from = calls.stat().st_size if calls.exists() else 0
    cut_wall, cut = datetime.now().astimezone(), time.monotonic()
    lab_node.power_cut(victim)
    try:
        def restarted() -> bool:
            for name in names:
                vm = region.vm(name)
                if vm["node_name"] == victim.name or READY not in region.console(vm):
                    return False
            return True

        wait_for(restarted, BOOT_TIMEOUT, "the HA guests to boot on other nodes")
        total = time.monotonic() - cut
        lost = audit_times(region, "node.lost", f"node/{node_id}")[-1]
        fenced = audit_times(region, "node.fence", f"node/{node_id}")[-1]
        detection = (lost - cut_wall).total_seconds()
        fencing = (fenced - lost).total_seconds()
        result = {"vms": count, "detection_s": detection, "fencing_s": fencing,
                  "restart_s": total - detection - fencing, "total_s": total,
                  "fencing_steps": fencing_steps(region, f"node/{node_id}", lost),
                  "controller_log": fencing_log(log_file, log_from, victim.name),
                  "bmc_calls": since(calls, calls_from)}
    finally:
        for name in names:
            region.cli("vm", "delete", name, "--wait")
        done = lab_bmc.ipmitool(victim, "power", "on")
        if done.returncode != 0:
            raise RuntimeError(f"power on {victim.name}: {done.stderr}")
        region.lab.reload_power()
        lab_node.wait_ready(victim)
        wait_for(lambda: region.node_state(victim.name) == "up", NODE_UP_TIMEOUT_S, "up")
        region.cli("node", "recover", victim.name)
        if region.json("node", "show", victim.name).get("self_fenced_at"):
            region.cli("node", "clear-fence", victim.name)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    image = build(REPO / "var/images/testguest.raw", REPO / "var/cache/testguest").image
    state = Path("/var/tmp") / f"vauban-bench-ha-{int(time.time())}"
    rounds: list[dict[str, Any]] = []
    try:
        lab = lab_main.up(state, 3, name="bha", subnet=SUBNET)
        with region_on(lab, image) as region:
            set_bmc(region, region.nodes[2].name)
            baseline = booted_baseline(region, region.nodes[1].name)
            print(f"baseline: create and boot of one guest {baseline:.1f} s", flush=True)
            for number in range(args.rounds):
                r = one_round(region, args.vms, number)
                r["restart_ratio"] = r["restart_s"] / baseline
                rounds.append(r)
                print(f"round {number + 1}: {r['vms']} HA VMs: detection "
                      f"{r['detection_s']:.1f} s, fencing {r['fencing_s']:.1f} s, restart "
                      f"{r['restart_s']:.1f} s ({r['restart_ratio']:.2f}x a plain create and "
                      f"boot); total {r['total_s']:.1f} s (goal 30 s)", flush=True)
                for step in r["fencing_steps"]:
                    print(f"  fencing: {step}", flush=True)
                for line in r["controller_log"]:
                    print(f"  controller: {line}", flush=True)
                for line in r["bmc_calls"]:
                    print(f"  BMC: {line}", flush=True)
    except Exception as e:
        print(f"benchmark failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        lab_main.down(state)
        shutil.rmtree(state, ignore_errors=True)  # its folder, emptied by down
    if rounds:
        print(f"median total {statistics.median(r['total_s'] for r in rounds):.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"baseline_s": baseline, "rounds": rounds},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
