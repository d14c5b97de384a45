"""/api/v1/gpus: every GPU of the region, its state, the VM using it, and its telemetry."""

from __future__ import annotations

from typing import Any

from controller import schemas
from controller.api.context import db
from controller.api.framework import ApiBlueprint
from controller.api.paging import page_of
from controller.authz import Perm, Region
from controller.queries import GpusQuery
from controller.services import gpus as service
from controller.services import nodes as node_service

api = ApiBlueprint("gpus", "/api/v1/gpus", "gpus")


def gpu_view(g: service.RegionGpu) -> schemas.Gpu:
    nvml = g.report.nvml
    used: dict[str, int] = {}
    for v in g.vgpus:
        used[v.type_id] = used.get(v.type_id, 0) + 1
    return schemas.Gpu(
        node=g.node_name, address=g.address, model=g.model, state=g.state,  # type: ignore[arg-type]
        instance=g.holder.instance.name if g.holder is not None else None,
        reason=g.blocker, driver=g.report.pci.driver, numa_node=g.report.pci.numa_node,
        iommu_group=g.report.pci.iommu_group, group_devices=g.report.pci.group_devices,
        vgpu_types=[schemas.GpuVgpuType(id=t.id, name=t.name, capacity=t.capacity)
                    for t in g.vgpu_types()],
        vgpus=[schemas.GpuVgpu(uuid=v.id, type_id=v.type_id, instance=v.instance.name)
               for v in g.vgpus],
        telemetry=nvml.telemetry if nvml is not None else None,
        mig=nvml.mig if nvml is not None else None,
    )


@api.route("GET", "", access=Region(Perm.REGION_READ),
           summary="List the region's GPUs, by node and PCI address", query=GpusQuery,
           responses={200: list[schemas.Gpu]})
def list_gpus(query: GpusQuery) -> Any:
    """The region's GPUs, a page at a time, by node name and PCI address. They are read
    from the nodes' reports, not rows of their own: the page is cut after reading them."""
    session = db()
    nodes = None if query.node is None else [node_service.find(session, query.node)]
    views = [gpu_view(g) for g in service.region_gpus(session, nodes)]
    if query.state is not None:
        views = [v for v in views if v.state == query.state]
    return page_of(views, lambda v: v.node, lambda v: v.address, query.limit, query.cursor)
