"""The GPU driver contract: find GPUs, hand them to VMs whole or as vGPUs, and take them back.

Vocabulary:
- a *GPU* is an NVIDIA PCI function (class 0300/0302) named by its address;
- its *group* is its IOMMU group: every device in it goes to the VM together;
- *passthrough* binds the whole group to vfio-pci, recording each device's
  original driver first; *release* restores exactly those drivers;
- a *vGPU* is a mediated device (mdev) of one type, carved from a GPU whose
  host driver offers that type.

Every change to the host is recorded before it is made, so an agent that
restarts mid-way still knows what to restore.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from agent.errors import DriverError
from agent.protocol import DesiredVgpu, NodeGpu


@dataclass(frozen=True)
class GpuDriverInfo:
    name: str
    passthrough: bool
    vgpu: bool
    telemetry: bool


class GpuError(DriverError):
    """A GPU could not be given to, or taken back from, a VM; the message says why."""


class GpuDriver(ABC):
    info: GpuDriverInfo

    @abstractmethod
    def discover(self) -> tuple[list[NodeGpu], str]:
        """Every GPU of the node with its vGPUs and NVML view, and a note on NVML.

        Never raises for a host without GPUs or without the NVIDIA driver: that is [].
        """

    @abstractmethod
    def attach_group(self, owner: str, address: str) -> list[str]:
        """Bind the GPU's whole IOMMU group to vfio-pci for VM `owner`; the bound addresses.

        After success every device of the group but bridges is bound to vfio-pci
        and its original driver is on record. Calling again for the same owner
        changes nothing. On failure the host is as it was before the call.
        Raises GpuError when the group holds a device the host needs, IOMMU is
        off, the GPU is held for another VM, or the kernel refuses a bind.
        """

    @abstractmethod
    def release_group(self, address: str) -> None:
        """Give the GPU's group back to the drivers on record, then forget the record.

        A GPU with no record is left alone. On failure the record is kept, so
        a later call retries the restore.
        """

    @abstractmethod
    def held(self) -> dict[str, str]:
        """GPU address -> owning VM for every group this driver holds on record."""

    @abstractmethod
    def create_vgpu(self, spec: DesiredVgpu) -> None:
        """Make the mediated device `spec.uuid` of `spec.type_id` on `spec.parent`.

        Calling again when it exists with that type changes nothing. Raises
        GpuError if the type is unknown to the parent or no instance is left.
        """

    @abstractmethod
    def remove_vgpu(self, uuid: str) -> None:
        """Remove the mediated device; a missing one is already removed."""

    def close(self) -> None:  # noqa: B027 - most drivers hold nothing open
        """Release what the driver holds open (NVML, threads)."""
