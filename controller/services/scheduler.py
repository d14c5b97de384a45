"""Placement: filter the nodes that can host a VM, then weigh the rest.

The decision is pure given the nodes and their usage, so it is tested without a
database; `usage_by_node` reads the usage inside the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controller.db.models import Instance, Node
from controller.errors import NoValidHost
from controller.services import gpus as gpu_service
from controller.services.gpus import GpuWant, RegionGpu
from controller.services.nodes import node_state


@dataclass(frozen=True)
class Usage:
    vcpus: int = 0
    memory_mib: int = 0
    instances: int = 0


@dataclass(frozen=True)
class PlacementRequest:
    vcpus: int
    memory_mib: int
    pinned_node_id: str | None = None
    gpus: tuple[GpuWant, ...] = ()
    vgpu: str | None = None

    def describe(self) -> str:
        parts = [f"{self.vcpus} vCPUs", f"{self.memory_mib} MiB"]
        parts += [f"{w.count} {w.model} GPU{'s' if w.count > 1 else ''}" for w in self.gpus]
        if self.vgpu:
            parts.append(f"a {self.vgpu} vGPU")
        return ", ".join(parts[:-1]) + " and " + parts[-1]


@dataclass(frozen=True)
class Policy:
    cpu_allocation_ratio: float
    reserved_host_memory_mib: int
    node_down_after_s: float


def usage_by_node(db: Session) -> dict[str, Usage]:
    rows = db.execute(
        select(
            Instance.node_id,
            func.sum(Instance.vcpus),
            func.sum(Instance.memory_mib),
            func.count(Instance.id),
        ).group_by(Instance.node_id)
    )
    return {n: Usage(int(c or 0), int(m or 0), int(k)) for n, c, m, k in rows}


def free_capacity(node: Node, used: Usage, policy: Policy) -> tuple[int, int]:
    """(free vCPUs, free MiB) on a node under the policy's overcommit and host reserve."""
    vcpus = int(node.cpus * policy.cpu_allocation_ratio) - used.vcpus
    memory = node.memory_mib - policy.reserved_host_memory_mib - used.memory_mib
    return vcpus, memory


def refusal(node: Node, used: Usage, req: PlacementRequest, policy: Policy,
            now: datetime, gpus: list[RegionGpu] | None = None) -> str | None:
    """Why `node` cannot host the request, or None if it can."""
    state = node_state(node, now, policy.node_down_after_s)
    if state != "up":
        return "has never reported" if state == "new" else "is down (no recent heartbeat)"
    free_vcpus, free_mib = free_capacity(node, used, policy)
    if req.vcpus > free_vcpus:
        return f"has {max(free_vcpus, 0)} vCPUs free, {req.vcpus} asked"
    if req.memory_mib > free_mib:
        return f"has {max(free_mib, 0)} MiB memory free, {req.memory_mib} asked"
    if req.gpus or req.vgpu:
        return gpu_service.refusal(gpus or [], req.gpus, req.vgpu)
    return None


def choose_node(nodes: list[Node], usage: dict[str, Usage], req: PlacementRequest,
                policy: Policy, now: datetime,
                gpus_by_node: dict[str, list[RegionGpu]] | None = None) -> Node:
    """The best node for the request: most free memory, then fewest VMs, then name.

    A VM without GPUs prefers nodes with fewer free GPUs, keeping those for VMs that
    need them.

    Raises NoValidHost whose detail names every node and why it was refused.
    """
    candidates = [n for n in nodes if req.pinned_node_id in (None, n.id)]
    reasons: dict[str, str] = {}
    fit: list[Node] = []
    for node in candidates:
        why = refusal(node, usage.get(node.id, Usage()), req, policy, now,
                      (gpus_by_node or {}).get(node.id, []))
        if why is None:
            fit.append(node)
        else:
            reasons[node.name] = why
    if not fit:
        if not candidates:
            raise NoValidHost("the region has no nodes; join one with a join token", reasons={})
        listed = "; ".join(f"{name} {why}" for name, why in sorted(reasons.items()))
        raise NoValidHost(
            f"no node can host {req.describe()}: {listed}",
            reasons=reasons,
        )

    def weight(n: Node) -> tuple[int, int, int, str]:
        used = usage.get(n.id, Usage())
        spare_gpus = 0 if req.gpus or req.vgpu else gpu_service.free_count(
            (gpus_by_node or {}).get(n.id, []))
        return (spare_gpus, -free_capacity(n, used, policy)[1], used.instances, n.name)

    return min(fit, key=weight)
