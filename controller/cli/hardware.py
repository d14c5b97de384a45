"""CLI for what the nodes are made of: `vauban node show` and `vauban gpu list`."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any

from controller.cli.client import Client
from controller.cli.failures import print_failures
from controller.cli.fleet import fleet_node_commands
from controller.cli.formats import (
    Col,
    Column,
    MiB,
    add_list_filters,
    emit_list,
    emit_show,
    human_size,
    list_filters,
    one_of,
    size,
)
from controller.cli.ha import ha_node_commands
from controller.cli.output import add_wait_options
from controller.cli.xcpng import print_pool, xcpng_node_commands
from controller.states import GpuState, NodeState

GPU_ARG = re.compile(r"^(?P<model>[^:]+?)(?::(?P<count>\d+))?$")


def parse_gpu_arg(text: str) -> dict[str, Any]:
    """MODEL[:COUNT] -> {"model": MODEL, "count": COUNT}; argparse shows the error."""
    found = GPU_ARG.match(text.strip())
    if found is None or not found.group("model").strip():
        raise argparse.ArgumentTypeError(f"'{text}' is not MODEL or MODEL:COUNT (e.g. H100:2)")
    return {"model": found.group("model").strip(), "count": int(found.group("count") or 1)}


def _gib(mib: int) -> str:
    return human_size(mib * MiB)


def print_node(n: dict[str, Any]) -> None:
    """The node's state, its hardware in a few lines, and its qualification report."""
    inv = n.get("inventory") or {}
    print(f"{n['name']} ({n['id']}): {n['state']}, {n['instances']} VMs, "
          f"{n['vcpus_used']}/{n['cpus']} vCPUs and {_gib(n['memory_mib_used'])}/"
          f"{_gib(n['memory_mib'])} memory used")
    if n.get("maintenance"):
        print("maintenance: on (takes no new VMs; its VMs are moved away)")
    print_failures(n.get("failures") or [], "failures reported by its agent")
    print(f"certificate: serial {n['cert_serial']}, valid until "
          f"{n.get('cert_expires_at') or 'unknown (not renewed yet)'}")
    beat = n.get("storage_heartbeat")
    if beat:
        print(f"storage heartbeat: {beat['detail']}"
              + (f" (seq {beat['seq']})" if beat.get("seq") is not None else " (none written)"))
    if n.get("self_fenced_at"):
        print(f"self-fenced at {n['self_fenced_at']}: its VMs were destroyed and none starts "
              f"there until the fence is cleared (vauban node clear-fence {n['name']})")
    failover = n.get("failover")
    if failover and failover["state"] not in ("done", "cancelled"):
        print(f"failover: {failover['state']} since {failover['since']}: {failover['reason']}")
    if n.get("fenced_at"):
        print(f"fenced at {n['fenced_at']} (powered off, cut off from Ceph): it takes no VMs "
              f"until recovered (vauban node recover {n['name']})")
    if n.get("migration_address"):
        ready = "ready" if inv.get("migration_ready") else "not ready (libvirt TLS)"
        print(f"migration: {ready}, reached at {n['migration_address']}, hypervisor "
              f"certificate serial {n.get('hypervisor_cert_serial')}")
    if n.get("xcpng"):
        print_pool(n["xcpng"])
    hw = inv.get("hardware")
    if not hw:
        print("hardware: not reported yet")
        return
    cpu, mem = hw["cpu"], hw["memory"]
    print(f"CPU:     {cpu['model']}, {cpu['sockets']} sockets, {cpu['cores']} cores, "
          f"{cpu['threads']} threads, {cpu['virtualization'] or 'no VT-x/AMD-V'}")
    print(f"memory:  {_gib(mem['total_mib'])}, {len(hw['numa'])} NUMA nodes")
    for d in hw["disks"]:
        use = "free for Ceph" if d["free_for_osd"] else d["in_use_reason"]
        print(f"disk:    {d['name']} {human_size(d['size_bytes'])} "
              f"{'HDD' if d['rotational'] else 'SSD'} {d['model'] or ''} ({use})")
    for nic in (x for x in hw["nics"] if x["physical"]):
        speed = f"{nic['speed_mbps']} Mb/s" if nic["speed_mbps"] else "no link"
        sriov = f", SR-IOV {nic['sriov_total_vfs']} VFs" if nic["sriov_total_vfs"] else ""
        print(f"NIC:     {nic['name']} {nic['driver'] or ''} {speed}{sriov}")
    print(f"IOMMU:   {hw['iommu']['detail']}")
    print(f"KVM:     {hw['kvm']['detail']}")
    print(f"BMC:     {hw['bmc']['detail']}")
    for g in hw["gpus"]:
        print(f"GPU:     {g['address']} {g['model']} ({g['driver'] or 'no driver'})"
              + (f": {g['passthrough_blocker']}" if g["passthrough_blocker"] else ""))
    report = inv.get("qualification")
    if report:
        print(f"\nqualification ({report['profile']}): {report['verdict']}")
        for line in report["results"]:
            print(f"  {line['verdict']:<4}  {line['check']:<24} {line['reason']}")


NODE_COLUMNS: list[Column] = [
    ("NAME", "name"), ("STATE", "state"), ("CPUS", "cpus"), size("MEMORY", "memory_mib", MiB),
    ("VCPUS USED", "vcpus_used"), size("MEMORY USED", "memory_mib_used", MiB),
    ("VMS", "instances"),
    Col("KVM", "kvm_usable", lambda r: "yes" if r["kvm_usable"] else "no (TCG)")]


def cmd_node_list(c: Client, a: argparse.Namespace) -> int:
    params = list_filters(a, "name", "state", "label")
    return emit_list(a, c.get("/nodes", params=params), NODE_COLUMNS)


def cmd_node_show(c: Client, a: argparse.Namespace) -> int:
    return emit_show(a, c.get(f"/nodes/{a.name}"), print_node)


def cmd_node_maintenance(c: Client, a: argparse.Namespace) -> int:
    """Maintenance on: follow the node's emptying (each change of what it waits on shown);
    off: it takes new VMs again."""
    answer = c.post(f"/nodes/{a.name}/maintenance", {"on": a.state == "on"})
    if a.state == "off":
        print(f"node {a.name}: maintenance off; it takes new VMs again")
        return 0
    if not a.wait:
        print(f"node {a.name}: maintenance on; operation {answer['id']} moves its VMs away")
        return 0
    shown: list[str] = []

    def show(op: dict[str, Any]) -> None:
        message = op.get("message") or ""
        if message and (not shown or shown[-1] != message):
            shown.append(message)
            print(f"node {a.name}: {message}", flush=True)

    show(answer)
    c.wait(answer, show)
    print(f"node {a.name}: in maintenance and empty")
    return 0


def cmd_node_clear_fence(c: Client, a: argparse.Namespace) -> int:
    n = c.post(f"/nodes/{a.name}/clear-fence")
    print(f"fence of node {a.name} at {n['fence_cleared_at']} cleared: VMs start there again "
          "on their next start (none was started)")
    return 0


def cmd_node_remove(c: Client, a: argparse.Namespace) -> int:
    c.delete(f"/nodes/{a.name}")
    print(f"node {a.name} removed from the region: its agent is refused from now on")
    return 0


def _telemetry(row: dict[str, Any], key: str, fmt: str) -> str:
    t = row.get("telemetry") or {}
    return fmt.format(t[key]) if t.get(key) is not None else "-"


def _memory(row: dict[str, Any]) -> str:
    t = row.get("telemetry") or {}
    if t.get("memory_total_bytes") is None or t.get("memory_used_bytes") is None:
        return "-"
    return f"{human_size(t['memory_used_bytes'])}/{human_size(t['memory_total_bytes'])}"


def _user(row: dict[str, Any]) -> str:
    if row["instance"]:
        return str(row["instance"])
    if row["vgpus"]:
        return ", ".join(f"{v['instance']} ({v['type_id']})" for v in row["vgpus"])
    return row["reason"] or ""


GPU_COLUMNS: list[Column] = [
    ("NODE", "node"), ("ADDRESS", "address"), ("MODEL", "model"), ("STATE", "state"),
    ("VM / REASON", _user), ("UTIL", lambda r: _telemetry(r, "utilization_pct", "{}%")),
    ("MEMORY", _memory), ("TEMP", lambda r: _telemetry(r, "temperature_c", "{} C")),
    ("POWER", lambda r: _telemetry(r, "power_w", "{:.0f} W")),
    ("ECC", lambda r: _telemetry(r, "ecc_uncorrected_volatile", "{}")),
    ("XID", lambda r: ",".join(str(x["xid"]) for x in
                               (r.get("telemetry") or {}).get("xid_events", [])) or "-")]


def cmd_gpu_list(c: Client, a: argparse.Namespace) -> int:
    params = list_filters(a, "node", "state")
    return emit_list(a, c.get("/gpus", params=params), GPU_COLUMNS)


def hardware_commands(sub: Any, add: Callable[..., Any]) -> None:
    node = sub.add_parser("node", help="nodes").add_subparsers(dest="cmd", required=True)
    add_list_filters(add(node, "list", cmd_node_list, "list nodes", columns=NODE_COLUMNS),
                     name="only the one so named",
                     state=f"only those in this state: {one_of(NodeState)}",
                     label="only those with this label (KEY=VALUE)")
    add(node, "show", cmd_node_show, "show a node: hardware and qualification",
        show=True).add_argument("name")
    add(node, "remove", cmd_node_remove, "remove a node without VMs from the region (its "
        "agent is refused from then on)").add_argument("name")
    mt = add(node, "maintenance", cmd_node_maintenance, "maintenance on (the node takes no "
             "new VMs; its VMs are moved away, live) or off")
    mt.add_argument("name")
    mt.add_argument("state", choices=["on", "off"])
    add_wait_options(mt, "the node is empty (each VM that cannot move is named, with why)")
    add(node, "clear-fence", cmd_node_clear_fence, "let a node that fenced itself start VMs "
        "again (only once no other node runs them)").add_argument("name")
    fleet_node_commands(node, add)
    ha_node_commands(node, add)
    xcpng_node_commands(node, add)
    gpu = sub.add_parser("gpu", help="GPUs").add_subparsers(dest="cmd", required=True)
    add_list_filters(add(gpu, "list", cmd_gpu_list, "every GPU of the region with its state "
                         "and telemetry", columns=GPU_COLUMNS),
                     node="only those of this node",
                     state=f"only those in this state: {one_of(GpuState)}")
