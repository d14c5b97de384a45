"""Placement: one pure decision of where a VM goes and what it takes there.

`place` filters the nodes that can host a request (up; vCPUs, memory, disk and
GPUs free), weighs the rest, and returns the whole decision as a `Placement`:
the node, the GPUs or vGPU slot, and the disk it claims. The decision is pure
given a `Snapshot` of the region, so it is tested without a database;
`snapshot` reads one inside the caller's transaction (node rows locked), and
the caller records the Placement as it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from agent.protocol import PoolUsage, StorageStatus
from controller.db.models import Image, Instance, Node, Volume, as_utc
from controller.errors import NoValidHost
from controller.services import gpus as gpu_service
from controller.services import tenancy
from controller.services.gpus import GpuWant, RegionGpu, VgpuType
from controller.services.nodes import is_xapi_pool, node_state

GIB = 1024**3
LOCAL_POOL = "localfs"  # the pool name a localfs agent reports for its own disk
XAPI_POOL = "xapi"  # the pool name an XCP-ng pool's agent reports for its storage repository


@dataclass(frozen=True)
class Usage:
    vcpus: int = 0
    memory_mib: int = 0
    instances: int = 0
    disk_gib: int = 0  # root disks of its instances (the image's size where none was asked)


@dataclass(frozen=True)
class PlacementRequest:
    vcpus: int
    memory_mib: int
    pinned_node_id: str | None = None
    gpus: tuple[GpuWant, ...] = ()
    vgpu: str | None = None
    disk_gib: int = 0  # the root disk
    excluded_node_ids: frozenset[str] = frozenset()  # e.g. the node a VM moves away from
    refusals: tuple[tuple[str, str], ...] = ()  # (node id, why): refused by the caller

    def describe(self) -> str:
        parts = [f"{self.vcpus} vCPUs", f"{self.memory_mib} MiB"]
        if self.disk_gib:
            parts.append(f"{self.disk_gib} GiB of disk")
        parts += [f"{w.count} {w.model} GPU{'s' if w.count > 1 else ''}" for w in self.gpus]
        if self.vgpu:
            parts.append(f"a {self.vgpu} vGPU")
        return ", ".join(parts[:-1]) + " and " + parts[-1]


@dataclass(frozen=True)
class Policy:
    cpu_allocation_ratio: float
    reserved_host_memory_mib: int
    node_down_after_s: float
    disk_allocation_ratio: float = 1.0  # GiB of VM disks per GiB of storage
    storage: str = "localfs"  # or "rbd": root disks share the Ceph pool `root_pool`
    root_pool: str = ""


@dataclass(frozen=True)
class DiskCapacity:
    """Space for VM disks on one store: a node's own disk (localfs) or the Ceph pool (rbd)."""

    pool: str
    total_bytes: int | None  # None: not known, `unknown` says why
    allocated_gib: int = 0  # disks already placed on it
    shared: bool = False  # the region's Ceph pool, one for every node
    unknown: str = ""

    def capacity_gib(self, ratio: float) -> int:
        return int((self.total_bytes or 0) * ratio // GIB)

    def free_gib(self, ratio: float) -> int:
        return self.capacity_gib(ratio) - self.allocated_gib

    def refusal(self, need_gib: int, ratio: float) -> str | None:
        """Why a disk of `need_gib` does not fit, or None if it does."""
        if self.total_bytes is None:
            return self.unknown
        free = self.free_gib(ratio)
        if need_gib <= free:
            return None
        where = f"Ceph pool {self.pool} has " if self.shared else ""
        return (f"needs {need_gib} GiB of disk, {where}{max(free, 0)} GiB free of "
                f"{self.capacity_gib(ratio)} GiB at ratio {ratio}")


@dataclass(frozen=True)
class GpuChoice:
    address: str
    model: str


@dataclass(frozen=True)
class VgpuChoice:
    parent_address: str
    type_id: str
    type_name: str


@dataclass(frozen=True)
class DiskClaim:
    pool: str  # "localfs": the node's own disk; else the region's Ceph pool
    gib: int
    free_gib: int  # before this claim, at the allocation ratio
    capacity_gib: int  # the store's size times the allocation ratio


@dataclass(frozen=True)
class Placement:
    """The whole decision for one VM; the caller records exactly this."""

    node_id: str
    node_name: str
    disk: DiskClaim
    gpus: tuple[GpuChoice, ...] = ()
    vgpu: VgpuChoice | None = None


@dataclass
class Snapshot:
    """The region as the scheduler sees it: nodes, what they hold, their GPUs and disks."""

    nodes: list[Node]
    usage: dict[str, Usage] = field(default_factory=dict)
    gpus: dict[str, list[RegionGpu]] = field(default_factory=dict)
    disks: dict[str, DiskCapacity] = field(default_factory=dict)

    def disk(self, node_id: str) -> DiskCapacity:
        return self.disks.get(node_id) or DiskCapacity(
            LOCAL_POOL, None, unknown="has not reported its disk capacity")

    def took(self, node_id: str, vcpus: int, memory_mib: int, disk_gib: int = 0) -> None:
        """`node_id` also holds a VM of this size now (placed from this snapshot, recorded
        by the caller), so that the next placement from it counts that VM without reading
        the region again: with `disk_gib` of the node's own disk (a disk copied there; a
        disk in the shared pool stays counted where it is)."""
        u = self.usage.get(node_id, Usage())
        self.usage[node_id] = Usage(u.vcpus + vcpus, u.memory_mib + memory_mib,
                                    u.instances + 1, u.disk_gib + disk_gib)
        disk = self.disks.get(node_id)
        if disk_gib and disk is not None and not disk.shared:
            self.disks[node_id] = dataclasses.replace(
                disk, allocated_gib=disk.allocated_gib + disk_gib)


# --- reading the region (inside the caller's transaction) ------------------------------

def usage_by_node(db: Session, node_ids: Collection[str] | None = None) -> dict[str, Usage]:
    """What the instances use, per node: of every node, or only of `node_ids` (one node's
    page reads its own instances, not the region's)."""
    disk = func.coalesce(Instance.root_disk_gib, (Image.virtual_size_bytes + (GIB - 1)) // GIB)
    stmt = select(
        Instance.node_id,
        func.sum(Instance.vcpus),
        func.sum(Instance.memory_mib),
        func.count(Instance.id),
        func.sum(disk),
    ).join(Image, Image.id == Instance.image_id).group_by(Instance.node_id)
    if node_ids is not None:
        stmt = stmt.where(Instance.node_id.in_(list(node_ids)))
    usage = {n: Usage(int(c or 0), int(m or 0), int(k), int(d or 0))
             for n, c, m, k, d in db.execute(stmt)}
    # a VM migrating to a node takes its vCPUs and memory there already, and its root disk
    # when that is copied there (local storage); a shared disk stays where it is
    copied = func.sum(case((Instance.migration_copy_disks.is_(True), disk), else_=0))
    moving = select(Instance.migration_target_node_id, func.sum(Instance.vcpus),
                    func.sum(Instance.memory_mib), func.count(Instance.id), copied).join(
        Image, Image.id == Instance.image_id).where(
        Instance.migration_target_node_id.is_not(None)).group_by(
        Instance.migration_target_node_id)
    if node_ids is not None:
        moving = moving.where(Instance.migration_target_node_id.in_(list(node_ids)))
    for n, c, m, k, d in db.execute(moving):
        u = usage.get(str(n), Usage())
        usage[str(n)] = Usage(u.vcpus + int(c or 0), u.memory_mib + int(m or 0),
                              u.instances + int(k), u.disk_gib + int(d or 0))
    return usage


def snapshot(db: Session, nodes: list[Node], policy: Policy) -> Snapshot:
    """What `place` needs of `nodes`, read in the caller's transaction."""
    usage = usage_by_node(db)
    by_node: dict[str, list[RegionGpu]] = {}
    for g in gpu_service.region_gpus(db, nodes):
        by_node.setdefault(g.node_id, []).append(g)
    volume_gib = 0
    if policy.storage == "rbd":
        volume_gib = int(db.scalar(select(func.sum(Volume.size_gib))
                                   .where(Volume.pool == policy.root_pool)) or 0)
    return Snapshot(nodes, usage, by_node, disk_capacities(nodes, usage, policy, volume_gib))


def disk_capacities(nodes: list[Node], usage: dict[str, Usage], policy: Policy,
                    volume_gib: int = 0) -> dict[str, DiskCapacity]:
    """Per node, the store its VM disks go to: its own disk, or the pool all nodes share.

    localfs: the node's reported disk, less its instances' root disks. rbd: the pool
    as the freshest report names it, less every root disk and the volumes in it.
    """
    pools = {n.id: _local_disk(n, usage.get(n.id, Usage()).disk_gib, XAPI_POOL)
             for n in nodes if is_xapi_pool(n)}  # a pool's disks live on its own SR
    others = [n for n in nodes if n.id not in pools]
    if policy.storage != "rbd":
        return pools | {n.id: _local_disk(n, usage.get(n.id, Usage()).disk_gib) for n in others}
    allocated = sum(u.disk_gib for n, u in usage.items() if n not in pools) + volume_gib
    pool = _shared_pool(others, policy.root_pool, allocated)
    return pools | {n.id: pool for n in others}



def _reported(node: Node, pool: str) -> tuple[PoolUsage | None, str]:
    """The node's last report of `pool`, or None and what the node said instead."""
    if node.storage_status is None:
        return None, ""
    try:
        status = StorageStatus.model_validate(node.storage_status)
    except ValidationError:  # an agent of another version: its report is not used
        return None, "unreadable storage report"
    found = next((p for p in status.pools if p.pool == pool), None)
    return found, ": ".join(filter(None, [status.health, status.detail]))


def _local_disk(node: Node, allocated_gib: int, pool: str = LOCAL_POOL) -> DiskCapacity:
    report, said = _reported(node, pool)
    if report is None:
        return DiskCapacity(pool, None, allocated_gib, unknown=(
            "has not reported its disk capacity" + (f" ({said})" if said else "")))
    return DiskCapacity(pool, report.used_bytes + report.max_avail_bytes, allocated_gib)


def _shared_pool(nodes: list[Node], pool: str, allocated_gib: int) -> DiskCapacity:
    """The Ceph pool as the node that reported last saw it (stored + available)."""
    seen = [(as_utc(n.last_seen_at), n.name, n) for n in nodes if n.last_seen_at is not None]
    said = ""
    for _, _, node in sorted(seen, reverse=True):
        report, why = _reported(node, pool)
        if report is not None:
            return DiskCapacity(pool, report.used_bytes + report.max_avail_bytes, allocated_gib,
                                shared=True)
        said = said or (f"{node.name}: {why}" if why else "")
    return DiskCapacity(pool, None, allocated_gib, shared=True, unknown=(
        f"cannot tell the space of Ceph pool {pool}: no node reports it"
        + (f" ({said})" if said else "")))


# --- the decision (pure) ----------------------------------------------------------------

def free_capacity(node: Node, used: Usage, policy: Policy) -> tuple[int, int]:
    """(free vCPUs, free MiB) on a node under the policy's overcommit and host reserve."""
    vcpus = int(node.cpus * policy.cpu_allocation_ratio) - used.vcpus
    memory = node.memory_mib - policy.reserved_host_memory_mib - used.memory_mib
    return vcpus, memory


def refusal(node: Node, snap: Snapshot, req: PlacementRequest, policy: Policy,
            now: datetime) -> str | None:
    """Why `node` cannot host the request, or None if it can."""
    refused = dict(req.refusals).get(node.id)
    if refused is not None:
        return refused
    state = node_state(node, now, policy.node_down_after_s)
    if state != "up":
        return "has never reported" if state == "new" else "is down (no recent heartbeat)"
    if node.maintenance:
        return "is in maintenance"
    if node.fenced_at is not None:
        return "was fenced after it was lost (vauban node recover, once it is repaired)"
    if is_xapi_pool(node):
        why = pool_refusal(node, req)
        if why is not None:
            return why
    free_vcpus, free_mib = free_capacity(node, snap.usage.get(node.id, Usage()), policy)
    if req.vcpus > free_vcpus:
        return f"has {max(free_vcpus, 0)} vCPUs free, {req.vcpus} asked"
    if req.memory_mib > free_mib:
        return f"has {max(free_mib, 0)} MiB memory free, {req.memory_mib} asked"
    why = snap.disk(node.id).refusal(req.disk_gib, policy.disk_allocation_ratio)
    if why is not None:
        return why
    if req.gpus or req.vgpu:
        return gpu_refusal(snap.gpus.get(node.id, []), req.gpus, req.vgpu)
    return None


def pool_refusal(node: Node, req: PlacementRequest) -> str | None:
    """Why the XCP-ng pool `node` cannot take the request, or None: a pool takes only VMs
    placed on it by name, while its agent reads it, that one of its hosts can hold, and
    no GPU (Vauban drives no GPU of a pool)."""
    if req.pinned_node_id != node.id:
        return "is an XCP-ng pool: it takes only VMs placed on it by name (--node)"
    pool = (node.inventory or {}).get("pool") or {}
    if not pool.get("reachable"):
        said = pool.get("problem") or "not read yet"
        return f"is an XCP-ng pool its agent cannot reach now ({said})"
    largest = int(pool.get("largest_free_mib") or 0)
    if req.memory_mib > largest:
        return f"is an XCP-ng pool whose hosts have at most {largest} MiB memory free, " \
            f"{req.memory_mib} asked"
    if req.gpus or req.vgpu:
        return "is an XCP-ng pool: Vauban gives its VMs no GPU"
    return None


def place(snap: Snapshot, req: PlacementRequest, policy: Policy, now: datetime) -> Placement:
    """The best node for the request and what the VM takes there.

    Best: most free memory, then fewest VMs, then name; a VM without GPUs prefers
    nodes with fewer free GPUs, keeping those for VMs that need them.

    Raises NoValidHost whose detail names every node and why it was refused.
    """
    node = _choose(snap, req, policy, now)
    disk = snap.disk(node.id)
    ratio = policy.disk_allocation_ratio
    whole, slot = _pick_gpus(snap.gpus.get(node.id, []), req.gpus, req.vgpu)
    return Placement(
        node_id=node.id, node_name=node.name,
        disk=DiskClaim(disk.pool, req.disk_gib, disk.free_gib(ratio), disk.capacity_gib(ratio)),
        gpus=tuple(GpuChoice(g.address, g.model) for g in whole),
        vgpu=VgpuChoice(slot[0].address, slot[1].id, slot[1].name) if slot else None,
    )


def _choose(snap: Snapshot, req: PlacementRequest, policy: Policy, now: datetime) -> Node:
    candidates = [n for n in snap.nodes if req.pinned_node_id in (None, n.id)
                  and n.id not in req.excluded_node_ids]
    reasons: dict[str, str] = {}
    fit: list[Node] = []
    for node in candidates:
        why = refusal(node, snap, req, policy, now)
        if why is None:
            fit.append(node)
        else:
            reasons[node.name] = why
    if not fit:
        if not candidates and req.excluded_node_ids:
            raise NoValidHost(f"no node can host {req.describe()}: the region has no other "
                              "node", reasons={})
        if not candidates:
            raise NoValidHost("the region has no nodes; join one with a join token", reasons={})
        listed = "; ".join(f"{name} {why}" for name, why in sorted(reasons.items()))
        raise NoValidHost(f"no node can host {req.describe()}: {listed}", reasons=reasons)

    def weight(n: Node) -> tuple[int, int, int, str]:
        used = snap.usage.get(n.id, Usage())
        spare_gpus = 0 if req.gpus or req.vgpu else _free_gpus(snap.gpus.get(n.id, []))
        return (spare_gpus, -free_capacity(n, used, policy)[1], used.instances, n.name)

    return min(fit, key=weight)


# --- GPUs (pure, given the region's GPUs and who holds them) ----------------------------

def _vgpu_slots(query: str, gpus: list[RegionGpu]) -> list[tuple[RegionGpu, VgpuType]]:
    """GPUs with a free instance of the type; one type per GPU, never a whole-held GPU."""
    slots = []
    for g in gpus:
        if g.holder is not None:
            continue
        for t in g.vgpu_types():
            if not gpu_service.type_matches(query, t):
                continue
            if any(v.type_id != t.id for v in g.vgpus) or len(g.vgpus) >= t.capacity:
                continue
            slots.append((g, t))
    return slots


def gpu_refusal(gpus: list[RegionGpu], wants: tuple[GpuWant, ...],
                vgpu: str | None) -> str | None:
    """Why a node with these GPUs cannot take the request, or None if it can."""
    for want in wants:
        matching = [g for g in gpus if gpu_service.matches(want.model, g.model)]
        if not matching:
            return f"has no {want.model} GPU"
        if len(matching) < want.count:
            return f"has {len(matching)} {want.model} GPUs, {want.count} asked"
        free = [g for g in matching if g.free_for_passthrough()]
        if len(free) < want.count:
            why = []
            holders = [g.holder.instance for g in matching if g.holder is not None]
            held = sorted({i.name for i in holders if tenancy.may_see(i.project_id)})
            hidden = len({i.id for i in holders if not tenancy.may_see(i.project_id)})
            if hidden:  # another project's VMs are counted, never named
                held.append(f"{hidden} VM{'s' if hidden > 1 else ''} of other projects")
            if held:
                why.append(f"in use by {', '.join(held)}")
            if any(g.state == "vgpu" for g in matching):
                why.append("carved into vGPUs")
            blocked = [g for g in matching if g.state == "unusable"]
            if blocked:
                why.append(f"{blocked[0].address} cannot be passed through: {blocked[0].blocker}")
            return (f"has {len(free)} of {len(matching)} {want.model} GPUs free, "
                    f"{want.count} asked ({'; '.join(why)})")
    if vgpu is not None and not _vgpu_slots(vgpu, gpus):
        offering = [t for g in gpus for t in g.vgpu_types() if gpu_service.type_matches(vgpu, t)]
        if not offering:
            return f"has no GPU offering vGPU type {vgpu}"
        return f"has no free {vgpu} vGPU (its GPUs are in use or hold another vGPU type)"
    return None


def _pick_gpus(gpus: list[RegionGpu], wants: tuple[GpuWant, ...],
               vgpu: str | None) -> tuple[list[RegionGpu], tuple[RegionGpu, VgpuType] | None]:
    """The GPUs for a request `gpu_refusal` accepted: whole GPUs from one NUMA node when it
    can, and the vGPU slot on the GPU already holding most of that type (packing them)."""
    taken: list[RegionGpu] = []
    for want in wants:
        free = [g for g in gpus if gpu_service.matches(want.model, g.model)
                and g.free_for_passthrough() and g not in taken]
        by_numa: dict[int, list[RegionGpu]] = {}
        for g in free:
            by_numa.setdefault(g.report.pci.numa_node or 0, []).append(g)
        local = [grp for grp in by_numa.values() if len(grp) >= want.count]
        pool = min(local, key=lambda grp: (len(grp), grp[0].address)) if local else free
        taken += sorted(pool, key=lambda g: g.address)[:want.count]
    slot = None
    if vgpu is not None:
        slot = min(_vgpu_slots(vgpu, gpus), key=lambda s: (-len(s[0].vgpus), s[0].address))
    return taken, slot


def _free_gpus(gpus: list[RegionGpu]) -> int:
    return sum(1 for g in gpus if g.free_for_passthrough())
