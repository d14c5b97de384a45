"""The hypervisor driver contract.

Vocabulary: a *VM* is a guest this platform created; it is identified by the
instance UUID, ours. libvirt uses it as its own UUID too; XAPI chooses its own
(VmObservation.hypervisor_uuid) and the VM carries ours in its metadata. A VM is
*defined* (known to the hypervisor, persistent across hypervisor restarts) and
either *running* or *stopped*. A driver only ever lists or touches VMs that
carry this platform's metadata; anything else on the host is not its business.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from agent.errors import DriverError
from agent.protocol import ConsoleKind, GuestInfo, MigrationOrder

ROOT_DISK_TARGET = "vda"  # the disk a VM boots from; never hot-unplugged


@dataclass(frozen=True)
class HypervisorInfo:
    """What a driver can do, as data (never probed with hasattr)."""

    name: str
    accelerated: bool  # hardware virtualization (KVM) is used for new VMs
    live_migration: bool
    remote_console: bool


@dataclass(frozen=True)
class RbdSource:
    """A block device that is an RBD image in a Ceph cluster.

    The cephx key is not here: the hypervisor holds it in a secret registered under
    `secret_usage` (see HypervisorDriver.ensure_ceph_secret).
    """

    pool: str
    image: str
    monitors: tuple[tuple[str, int], ...]  # (host, port) of each monitor
    user: str  # cephx client id, without "client."
    secret_usage: str


@dataclass(frozen=True)
class VdiSource:
    """A disk that is a VDI in a storage repository of an XCP-ng pool (by UUIDs: the
    pool's refs change with every session)."""

    sr_uuid: str
    vdi_uuid: str


@dataclass(frozen=True)
class DiskSpec:
    """One block device of a VM: a file on the node, an RBD image or a pool's VDI."""

    source: Path | RbdSource | VdiSource
    format: Literal["raw", "qcow2"]
    target: str  # guest device name, e.g. "vda" (virtio) or "sda" (scsi)
    readonly: bool = False
    bus: Literal["virtio", "scsi"] = "virtio"  # scsi: on a virtio-scsi controller

    @property
    def path(self) -> Path:
        """The file behind a file-backed disk; ValueError for an RBD disk."""
        if not isinstance(self.source, Path):
            raise ValueError(f"disk {self.target} is not a file")
        return self.source


@dataclass(frozen=True)
class NicSpec:
    """A VM network card plugged into a bridge of the node."""

    mac: str
    bridge: str
    mtu: int
    device: str  # the host-side tap's name, at most 15 characters


@dataclass(frozen=True)
class HostdevSpec:
    """A host device given to the VM: a whole PCI function bound to vfio-pci, or a vGPU."""

    kind: Literal["pci", "mdev"]
    address: str  # pci: "0000:17:00.0"; mdev: the mediated device's UUID


@dataclass(frozen=True)
class VmSpec:
    """Everything needed to define a VM."""

    id: str
    name: str  # hypervisor-side name, unique on the node
    vcpus: int
    memory_mib: int
    disks: tuple[DiskSpec, ...]
    console_log: Path  # the serial console is written here
    power_seq: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    nics: tuple[NicSpec, ...] = ()
    hostdevs: tuple[HostdevSpec, ...] = ()
    firmware: Literal["bios", "uefi"] = "bios"
    secure_boot: bool = False  # UEFI only, machine q35 only
    machine: Literal["i440fx", "q35"] = "i440fx"


@dataclass(frozen=True)
class VmObservation:
    """A VM as the hypervisor reports it."""

    id: str
    name: str
    running: bool
    power_seq: int
    console_log: Path | None
    labels: dict[str, str] = field(default_factory=dict)  # as given in VmSpec.labels
    guest: GuestInfo | None = None  # what its guest agent says, when one answers
    # False only while it arrives by a live migration (defined here once it completed)
    persistent: bool = True
    # the hypervisor's own UUID of the VM where it differs from `id` (XAPI chooses it)
    hypervisor_uuid: str | None = None


class ConsoleStream(Protocol):
    """A VM console opened on the node: bytes both ways, as a socket's calls name them."""

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes from the guest, waiting for some; b"" once the console ended.
        OSError when it broke."""

    def sendall(self, data: bytes) -> None:
        """All of `data` to the guest; OSError when the console broke or ended."""

    def close(self) -> None:
        """End the console; a recv waiting in another thread returns (b"" or OSError)."""


class HypervisorError(DriverError):
    """A hypervisor operation failed; `retryable` says whether trying again may help."""


class HypervisorDriver(ABC):
    """Defines, starts, stops and removes VMs on one node."""

    @abstractmethod
    def info(self) -> HypervisorInfo:
        """Capabilities of this driver on this node."""

    @abstractmethod
    def list_vms(self) -> list[VmObservation]:
        """All VMs of this platform on the node, running or not; nothing else."""

    def domain_stats(self) -> list[tuple[str, dict[str, object]]]:
        """(UUID, statistics) of every domain the hypervisor runs, in one call to it (the
        keys are libvirt's `getAllDomainStats` ones: `cpu.time`, `block.0.rd.bytes`, ...).
        A driver that keeps none returns []. Raises HypervisorError when it cannot ask."""
        return []

    @abstractmethod
    def define(self, spec: VmSpec) -> None:
        """Define a persistent, stopped VM.

        After success the VM exists and is stopped. On failure nothing was
        defined. Defining an id that already exists raises HypervisorError.
        """

    @abstractmethod
    def start(self, vm_id: str) -> None:
        """Start a defined VM. After success it is running; starting a running VM is a no-op."""

    @abstractmethod
    def stop(self, vm_id: str, *, grace_seconds: float) -> None:
        """Ask the guest to power off (ACPI), then force it off after `grace_seconds`.

        After success the VM is stopped and still defined. Stopping a stopped VM is a no-op.
        """

    @abstractmethod
    def reset(self, vm_id: str) -> None:
        """Reset a running VM like its reset button: the guest restarts at once, without
        shutting down (it gets no say). The VM stays running in the same hypervisor process.

        A stopped VM raises HypervisorError and is left stopped.
        """

    @abstractmethod
    def undefine(self, vm_id: str) -> None:
        """Force the VM off if needed and remove its definition.

        After success the hypervisor no longer knows the VM; files its disks
        point at are left alone (they belong to the storage driver). Removing an
        unknown id is a no-op.
        """

    @abstractmethod
    def set_power_seq(self, vm_id: str, power_seq: int) -> None:
        """Record in the VM's own metadata the last operator power action applied."""

    # Live migration. Not abstract: a driver that cannot inherits the refusal.

    def migrate(self, vm_id: str, order: MigrationOrder, labels: dict[str, str],
                on_progress: Callable[[int], None]) -> None:
        """Move the running VM to the node `order` names without stopping it.

        After success the VM runs there, is defined there (persistent) with its labels
        updated by `labels`, and is no longer defined here. After failure it runs here
        as before and nothing of it is defined there. `on_progress` gets a percentage
        now and then. Aborted (a failure) after `order.timeout_s`. With
        `order.copy_disks` the root disk's own data is copied into the disk the target
        made at the same path (see agent.migration_disks); this node's copy is left as
        it was, for the caller to drop. With `order.cold` the VM is stopped and its guest
        never runs: after success it is defined there, paused (the target's agent turns
        it off); after failure it is stopped here as before.
        """
        raise HypervisorError(f"{self.info().name} cannot migrate VMs")

    def abort_migration(self, vm_id: str) -> None:
        """Abort the migration of the VM under way from this node (its `migrate` call then
        fails and the VM runs here as before). Past the switchover the hypervisor refuses:
        HypervisorError, and the move completes. Nothing to abort: HypervisorError."""
        raise HypervisorError(f"{self.info().name} has no migration to abort")

    def migration_downtime_ms(self, vm_id: str) -> int | None:
        """How long the VM that arrived here by migration was paused at switchover,
        when the hypervisor still knows; None otherwise."""
        return None

    # Disks and the secrets RBD disks need. Not abstract (yet): a driver without
    # volume support inherits these refusals, like Nova's ComputeDriver defaults.

    def ensure_ceph_secret(self, usage: str, key: str) -> None:
        """Make the hypervisor hold the cephx `key` under `usage` (see RbdSource.secret_usage).

        After success a secret of type ceph with that usage and value exists;
        it lives only in the hypervisor's memory (never on the node's disk) and
        cannot be read back through the hypervisor's API. Idempotent: the same
        value changes nothing, a different one replaces the value. Such a secret
        does not survive a restart of the hypervisor daemon, so call this before
        every define, start or attach of a VM with an RBD disk; running VMs
        keep working without it. On failure an existing secret keeps its
        definition. The key never appears in a log line or an error message.
        """
        raise HypervisorError(f"{type(self).__name__} does not support Ceph secrets")

    def attach_disk(self, vm_id: str, disk: DiskSpec) -> None:
        """Hot-plug `disk` into a running VM, live and in its persistent definition.

        After success the guest sees the disk now and after a restart of the
        VM. On failure nothing changed. A stopped VM, or a target the VM already
        uses (live or in its definition), raises HypervisorError naming it.
        """
        raise HypervisorError(f"{type(self).__name__} does not support disk hot-plug")

    def detach_disk(self, vm_id: str, target: str) -> None:
        """Remove the disk at `target` from the VM, live (if running) and from its definition.

        Waits until the guest has released the device. After success the VM has
        no disk at `target`, now or after a restart. The root disk ("vda") and
        an unknown target raise HypervisorError and change nothing. When the
        guest does not release the device in time: HypervisorError(retryable)
        with the disk already gone from the persistent definition and its live
        removal pending; calling again waits again.
        """
        raise HypervisorError(f"{type(self).__name__} does not support disk hot-plug")

    def resize_disk(self, vm_id: str, target: str, size_bytes: int) -> None:
        """Tell the VM that the disk at `target` has grown to `size_bytes`.

        Call it after the storage grew the disk. After success a running guest
        sees the new capacity (a virtio disk signals the change to its kernel);
        a stopped VM needs nothing (it reads the size when it starts), so for it
        this is a no-op. The same size again is a no-op. A smaller size than the
        guest has, the root disk, an unknown VM or target raise HypervisorError
        and change nothing (the guest never loses data to a shrink).
        """
        raise HypervisorError(f"{type(self).__name__} does not support growing disks live")

    def freeze_filesystems(self, vm_id: str) -> bool:
        """Ask the running guest's agent to flush and freeze its filesystems, so that a
        snapshot of its disks taken now is filesystem-consistent ("quiesced").

        True: they are frozen, and the caller must call `thaw_filesystems` (in a
        `finally`) as soon as its snapshots are taken; writes in the guest wait until
        then. False: nothing is frozen (a stopped VM, no guest agent, or one that did
        not answer within a short bounded time): a snapshot is only crash-consistent.
        A guest agent that failed to freeze has been asked to thaw again before False
        is returned. HypervisorError only for an unknown VM. Default: never frozen.
        """
        return False

    def thaw_filesystems(self, vm_id: str) -> None:
        """Let the guest write again after `freeze_filesystems` returned True.

        After success no filesystem of the guest is frozen (a guest agent that holds
        none frozen changes nothing; a stopped VM needs nothing). HypervisorError
        (retryable) when its guest agent did not confirm the thaw within a short
        bounded time: the guest may still be frozen and the call should be repeated.
        Default: nothing was frozen, nothing to do.
        """
        return None

    def list_disks(self, vm_id: str) -> list[DiskSpec]:
        """The VM's disks as the guest has them now (as defined when it is stopped).

        HypervisorError for an unknown VM. Changes nothing.
        """
        raise HypervisorError(f"{type(self).__name__} does not support listing disks")

    def open_console(self, vm_id: str, kind: ConsoleKind) -> ConsoleStream:
        """Open the running VM's console: "vnc", its VNC server (RFB) as the guest's
        display; "serial", its first serial port, live (a serial console already open is
        taken over: it ends). The serial log goes on being written as before. "log": the
        last LOG_TAIL_BYTES of the serial log, then the end; the VM may be stopped.

        After success the caller owns the stream and closes it. HypervisorError, saying
        why in words, when the VM is unknown, not running or has no such console; nothing
        is left open then.
        """
        raise HypervisorError(f"{type(self).__name__} has no consoles")
