"""The region's GPUs: what nodes report, who holds which, and recording a placement's.

A node reports its GPUs in its inventory (PCI view, vGPUs, NVML telemetry);
the controller's assignments say which VM holds a GPU or a vGPU slot. Which GPUs
a VM gets is the scheduler's decision (scheduler.place); this module reads the
GPUs for it and records what it chose.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.protocol import NodeGpu
from controller.db.models import GpuAssignment, Instance, Node, VgpuAssignment
from controller.errors import InvalidInput

if TYPE_CHECKING:  # the scheduler decides, this module reads and records
    from controller.services.scheduler import GpuChoice, VgpuChoice

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
        if not any(type_matches(vgpu, t) for g in gpus for t in g.vgpu_types()):
            listed = ", ".join(types) or "none (no GPU runs a vGPU host driver)"
            raise InvalidInput(f"unknown vGPU type '{vgpu}'; types in this region: {listed}")


def type_matches(query: str, t: VgpuType) -> bool:
    """A vGPU type asked by its id ("nvidia-1030") or words of its name ("H100XM-10C")."""
    return query == t.id or matches(query, t.name)


def record(inst: Instance, gpus: tuple[GpuChoice, ...], vgpu: VgpuChoice | None) -> list[str]:
    """Add to `inst` the assignments of the GPUs and vGPU slot its placement chose; their
    names, for the audit. Flushing raises IntegrityError if another VM took a GPU meanwhile."""
    for g in gpus:
        inst.gpus.append(GpuAssignment(node_id=inst.node_id, address=g.address, model=g.model))
    if vgpu is not None:
        inst.vgpus.append(VgpuAssignment(id=str(uuid.uuid4()), node_id=inst.node_id,
                                         parent_address=vgpu.parent_address,
                                         type_id=vgpu.type_id, type_name=vgpu.type_name))
    return ([f"{g.address} {g.model}" for g in gpus]
            + [f"{v.parent_address} {v.type_name}" for v in inst.vgpus])
