"""/api/v1/gpus: every GPU of the region, its state, the VM using it, and its telemetry."""

from __future__ import annotations

from typing import Any

from controller import schemas
from controller.api.context import db
from controller.api.framework import ApiBlueprint
from controller.authz import Perm, Region
from controller.services import gpus as service

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
           summary="List the region's GPUs", responses={200: list[schemas.Gpu]})
def list_gpus() -> Any:
    return [gpu_view(g) for g in service.region_gpus(db())]
