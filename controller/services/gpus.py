"""The region's GPUs: what nodes report, who holds which, and which can take a request.

A node reports its GPUs in its inventory (PCI view, vGPUs, NVML telemetry);
the controller's assignments say which VM holds a GPU or a vGPU slot. The
decisions here are pure given those two, so the scheduler can use them inside
its locked transaction and tests can use them without a database.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.protocol import NodeGpu
from controller.db.models import GpuAssignment, Node, VgpuAssignment
from controller.errors import InvalidInput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuWant:
    model: str
    count: int


@dataclass(frozen=True)
class VgpuType:
    id: str
    name: str
    capacity: int  # instances the GPU can hold of this type, counting the ones made


@dataclass
class RegionGpu:
    """One GPU of one node, as reported and as assigned."""

    node_id: str
    node_name: str
    report: NodeGpu
    holder: GpuAssignment | None = None
    vgpus: list[VgpuAssignment] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.report.pci.address

    @property
    def model(self) -> str:
        return self.report.pci.model

    @property
    def blocker(self) -> str | None:
        return self.report.pci.passthrough_blocker

    def vgpu_types(self) -> list[VgpuType]:
        made: dict[str, int] = {}
        for m in self.report.mdevs:
            made[m.type_id] = made.get(m.type_id, 0) + 1
        return [VgpuType(t.id, t.name, t.available_instances + made.get(t.id, 0))
                for t in self.report.pci.mdev_types]

    @property
    def state(self) -> str:
        """free, in-use (whole, by one VM), vgpu (carved into vGPUs) or unusable (blocker)."""
        if self.holder is not None:
            return "in-use"
        if self.vgpus or self.report.mdevs:
            return "vgpu"
        return "unusable" if self.blocker else "free"

    def free_for_passthrough(self) -> bool:
        return self.state == "free"


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[\s_\-/]+", text.lower()) if t]


def matches(query: str, name: str) -> bool:
    """The query's words appear together, in order, in the name ("h100" in "H100 SXM5 80GB")."""
    want, have = _tokens(query), _tokens(name)
    return bool(want) and any(have[i:i + len(want)] == want
                              for i in range(len(have) - len(want) + 1))


def region_gpus(db: Session, nodes: list[Node] | None = None) -> list[RegionGpu]:
    """Every GPU the nodes last reported, joined with the assignments holding them."""
    nodes = nodes if nodes is not None else list(db.scalars(select(Node).order_by(Node.name)))
    holders = {(a.node_id, a.address): a for a in db.scalars(select(GpuAssignment))}
    vgpus: dict[tuple[str, str], list[VgpuAssignment]] = {}
    for v in db.scalars(select(VgpuAssignment).order_by(VgpuAssignment.created_at)):
        vgpus.setdefault((v.node_id, v.parent_address), []).append(v)
    out = []
    for node in nodes:
        for raw in (node.inventory or {}).get("gpus", []):
            try:
                report = NodeGpu.model_validate(raw)
            except ValidationError as e:  # an agent of another version: its GPUs are not offered
                log.warning("node %s: unreadable GPU report skipped: %s", node.name, e)
                continue
            key = (node.id, report.pci.address)
            out.append(RegionGpu(node.id, node.name, report, holders.get(key),
                                 vgpus.get(key, [])))
    return out


def check_known(gpus: list[RegionGpu], wants: tuple[GpuWant, ...], vgpu: str | None) -> None:
    """Raise InvalidInput for a GPU model or vGPU type that no node of the region has."""
    models = sorted({g.model for g in gpus})
    for want in wants:
        if not any(matches(want.model, m) for m in models):
            listed = ", ".join(models) or "none (no node reports an NVIDIA GPU)"
            raise InvalidInput(f"unknown GPU model '{want.model}'; models in this region: {listed}")
    if vgpu is not None:
        types = sorted({t.name for g in gpus for t in g.vgpu_types()})
        if not any(_type_matches(vgpu, g, t) for g in gpus for t in g.vgpu_types()):
            listed = ", ".join(types) or "none (no GPU runs a vGPU host driver)"
            raise InvalidInput(f"unknown vGPU type '{vgpu}'; types in this region: {listed}")


def _type_matches(query: str, gpu: RegionGpu, t: VgpuType) -> bool:
    return query == t.id or matches(query, t.name)


def _vgpu_slots(query: str, gpus: list[RegionGpu]) -> list[tuple[RegionGpu, VgpuType]]:
    """GPUs with a free instance of the type; one type per GPU, never a whole-held GPU."""
    slots = []
    for g in gpus:
        if g.holder is not None:
            continue
        for t in g.vgpu_types():
            if not _type_matches(query, g, t):
                continue
            if any(v.type_id != t.id for v in g.vgpus) or len(g.vgpus) >= t.capacity:
                continue
            slots.append((g, t))
    return slots


def refusal(gpus: list[RegionGpu], wants: tuple[GpuWant, ...], vgpu: str | None) -> str | None:
    """Why a node with these GPUs cannot take the request, or None if it can."""
    for want in wants:
        matching = [g for g in gpus if matches(want.model, g.model)]
        if not matching:
            return f"has no {want.model} GPU"
        if len(matching) < want.count:
            return f"has {len(matching)} {want.model} GPUs, {want.count} asked"
        free = [g for g in matching if g.free_for_passthrough()]
        if len(free) < want.count:
            why = []
            held = sorted({g.holder.instance.name for g in matching if g.holder is not None})
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
        offering = [g for g in gpus for t in g.vgpu_types() if _type_matches(vgpu, g, t)]
        if not offering:
            return f"has no GPU offering vGPU type {vgpu}"
        return f"has no free {vgpu} vGPU (its GPUs are in use or hold another vGPU type)"
    return None


def pick(gpus: list[RegionGpu], wants: tuple[GpuWant, ...],
         vgpu: str | None) -> tuple[list[RegionGpu], tuple[RegionGpu, VgpuType] | None]:
    """The GPUs for a request `refusal` accepted: whole GPUs from one NUMA node when it can,
    and the vGPU slot on the GPU already holding most of that type (packing them)."""
    taken: list[RegionGpu] = []
    for want in wants:
        free = [g for g in gpus if matches(want.model, g.model) and g.free_for_passthrough()
                and g not in taken]
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


def free_count(gpus: list[RegionGpu]) -> int:
    return sum(1 for g in gpus if g.free_for_passthrough())
