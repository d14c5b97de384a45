"""The `other_config` keys by which Vauban marks what it made in a pool (shared by the
hypervisor and storage drivers: XAPI chooses the UUIDs, these carry ours)."""

INSTANCE = "vauban.instance"  # a VM, or a VDI made for it: the instance id
POWER_SEQ = "vauban.power_seq"  # a VM: the last operator power action applied
LABELS = "vauban.labels"  # a VM: VmSpec.labels as JSON
IMAGE = "vauban.image"  # a VDI holding an image: the image id
DISK = "vauban.disk"  # a VDI of a VM: "root"
