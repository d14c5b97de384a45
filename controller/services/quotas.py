"""Project quotas: how much a project may hold, checked where it would grow.

A project's quotas are a JSON object on its row; a quota not set is no limit. Usage is
counted by the database from what the project holds (never kept as a counter that could
drift). A creation or a resize takes the project's row lock first (`lock`), so two
requests of one project are checked one after the other, each seeing what the other
made: concurrent requests cannot together pass a limit. A refusal names the quota, its
limit, what is in use and what was asked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controller.db.models import (
    GpuAssignment,
    Image,
    Instance,
    Network,
    Port,
    PortAddress,
    Project,
    VgpuAssignment,
    Volume,
)
from controller.errors import ServiceError

GIB = 1024**3
# the quotas a project may have, in words for the refusals
COUNTED = {
    "instances": "VMs", "vcpus": "vCPUs", "memory_mib": "MiB of memory",
    "vgpus": "vGPUs", "storage_gib": "GiB of storage (root disks and volumes)",
    "volumes": "volumes", "networks": "networks",
    "public_addresses": "addresses on shared (provider) networks",
}


class QuotaExceeded(ServiceError):
    status = 409
    title = "Quota exceeded"
    slug = "quota-exceeded"


@dataclass(frozen=True)
class Ask:
    """What a request would add to its project."""

    instances: int = 0
    vcpus: int = 0
    memory_mib: int = 0
    vgpus: int = 0
    storage_gib: int = 0
    volumes: int = 0
    networks: int = 0
    public_addresses: int = 0
    gpus: tuple[str, ...] = ()  # the models of the GPUs it would hold


def lock(db: Session, project_id: str) -> Project:
    """The project's row, locked until the caller's transaction ends (PostgreSQL; SQLite's
    writers take turns already)."""
    return db.execute(select(Project).where(Project.id == project_id)
                      .with_for_update()).scalar_one()


def usage(db: Session, project_id: str) -> dict[str, int]:
    """What the project holds now, per quota."""
    count = lambda stmt: int(db.scalar(stmt) or 0)  # noqa: E731
    mine = Instance.project_id == project_id
    # an image's virtual size in whole GiB, rounded up, as the node makes the root disk
    root_gib = func.coalesce(Instance.root_disk_gib, (Image.virtual_size_bytes + GIB - 1) // GIB)
    return {
        "instances": count(select(func.count(Instance.id)).where(mine)),
        "vcpus": count(select(func.sum(Instance.vcpus)).where(mine)),
        "memory_mib": count(select(func.sum(Instance.memory_mib)).where(mine)),
        "vgpus": count(select(func.count(VgpuAssignment.id)).join(Instance).where(mine)),
        "storage_gib": count(select(func.sum(root_gib)).select_from(Instance)
                             .join(Image, Image.id == Instance.image_id).where(mine))
        + count(select(func.sum(Volume.size_gib)).where(Volume.project_id == project_id)),
        "volumes": count(select(func.count(Volume.id)).where(Volume.project_id == project_id)),
        "networks": count(select(func.count(Network.id))
                          .where(Network.project_id == project_id)),
        "public_addresses": count(
            select(func.count(PortAddress.address)).join(Port).join(Network)
            .where(Port.project_id == project_id, Network.project_id.is_(None))),
    }


def gpus_in_use(db: Session, project_id: str) -> list[str]:
    """The models of the whole GPUs the project's VMs hold."""
    return list(db.scalars(select(GpuAssignment.model).join(Instance)
                           .where(Instance.project_id == project_id)))


def matching(model_words: str, models: list[str] | tuple[str, ...]) -> int:
    """How many of `models` a GPU quota's key names (its words, in any case)."""
    words = model_words.lower().split()
    return sum(all(w in m.lower() for w in words) for m in models)


def check(db: Session, project: Project, ask: Ask) -> None:
    """QuotaExceeded, naming the first quota `ask` would pass, if any. The caller holds
    the project's lock (`lock`) and has not yet added what it asks for."""
    limits: Mapping[str, object] = project.quotas or {}
    used = usage(db, project.id)
    for key, words in COUNTED.items():
        limit = limits.get(key)
        wanted = int(getattr(ask, key))
        if isinstance(limit, int) and wanted and used[key] + wanted > limit:
            raise QuotaExceeded(
                f"quota {key} of project '{project.name}' exceeded: limit {limit} {words}, "
                f"{used[key]} in use, {wanted} asked", quota=key, limit=limit,
                in_use=used[key], asked=wanted)
    gpu_limits = limits.get("gpus")
    if ask.gpus and isinstance(gpu_limits, dict):
        held = gpus_in_use(db, project.id)
        for model, limit in sorted(gpu_limits.items()):
            wanted = matching(model, ask.gpus)
            in_use = matching(model, held)
            if wanted and in_use + wanted > int(limit):
                raise QuotaExceeded(
                    f"quota gpus['{model}'] of project '{project.name}' exceeded: limit "
                    f"{limit} GPUs, {in_use} in use, {wanted} asked", quota=f"gpus.{model}",
                    limit=limit, in_use=in_use, asked=wanted)

