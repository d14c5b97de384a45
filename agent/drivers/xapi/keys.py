"""The `other_config` keys by which Vauban marks what it made in a pool (shared by the
hypervisor and storage drivers: XAPI chooses the UUIDs, these carry ours)."""

from typing import Any

INSTANCE = "vauban.instance"  # a VM, or a VDI made for it: the instance id
# a VM Vauban made: its own XAPI uuid. A copy made in the pool (Xen Orchestra's clone or
# replica) keeps other_config, so it carries the original's uuid here and is not ours
SELF = "vauban.uuid"
POWER_SEQ = "vauban.power_seq"  # a VM: the last operator power action applied
LABELS = "vauban.labels"  # a VM: VmSpec.labels as JSON
IMAGE = "vauban.image"  # a VDI holding an image: the image id
DISK = "vauban.disk"  # a VDI of a VM: "root"


def our_vm(record: dict[str, Any]) -> str | None:
    """The instance id of a cached VM record if it is a VM Vauban made (not a template,
    snapshot, control domain, or a copy of ours made in the pool); None otherwise."""
    config = record.get("other_config") or {}
    if (record.get("is_a_template") or record.get("is_a_snapshot")
            or record.get("is_control_domain") or config.get(SELF) != record.get("uuid")):
        return None
    instance = config.get(INSTANCE)
    return str(instance) if instance else None
