"""LibvirtDriver: the hypervisor contract on libvirt/QEMU (policy only; bindings in host/guest)."""

from __future__ import annotations

import logging
import re
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import libvirt

from agent.drivers.hypervisor.base import (
    ROOT_DISK_TARGET,
    ConsoleStream,
    DiskSpec,
    HypervisorDriver,
    HypervisorError,
    HypervisorInfo,
    VdiSource,
    VmObservation,
    VmSpec,
)
from agent.drivers.hypervisor.libvirt import console, migrate, secrets
from agent.drivers.hypervisor.libvirt.config import (
    DiskConfig,
    DomainConfig,
    HostdevConfig,
    InstanceMetadata,
    NicConfig,
    guest_agent_connected,
    parse_disks,
)
from agent.drivers.hypervisor.libvirt.guest import Guest
from agent.drivers.hypervisor.libvirt.host import Host
from agent.protocol import ConsoleKind, GuestInfo, MigrationOrder
from agent.revert import Reverter

log = logging.getLogger(__name__)

# How long detach_disk waits for the guest to release a device. Under TCG on a
# busy 2-core node a guest's ACPI hot-unplug takes a second or two; a guest that
# ignores the request (no OS, hung kernel) would otherwise be waited on forever.
DETACH_TIMEOUT_S = 60.0
GUEST_INFO_REFRESH_S = 15.0  # how often a running VM's guest agent is asked again
VIRTIO_TARGET = re.compile(r"vd[a-z]{1,3}")


def disk_config(disk: DiskSpec) -> DiskConfig:
    """The libvirt disk for a contract DiskSpec (a file or an RBD image)."""
    if isinstance(disk.source, VdiSource):
        raise HypervisorError(f"disk {disk.target} is a VDI of an XCP-ng pool: "
                              "libvirt cannot use it")
    return DiskConfig(disk.source, disk.format, disk.target, disk.readonly, disk.bus)


def disk_spec(disk: DiskConfig) -> DiskSpec:
    """The contract DiskSpec for a libvirt disk."""
    return DiskSpec(disk.source, disk.format, disk.target, disk.readonly, disk.bus)


class LibvirtDriver(HypervisorDriver):
    """VMs as persistent libvirt domains marked with our metadata.

    `accelerated` comes from the KVM probe: domains are type "kvm" with the host
    CPU passed through when True, else type "qemu" (TCG emulation).
    """

    def __init__(self, uri: str = "qemu:///system", *, accelerated: bool,
                 detach_timeout: float = DETACH_TIMEOUT_S,
                 tls_ready: Callable[[], bool] = lambda: False) -> None:
        self.uri = uri
        # whether the node's TLS material is in place and libvirtd answers over TLS
        # (agent/hypervisor_tls.py): what a live migration to or from it needs
        self.tls_ready = tls_ready
        self.accelerated = accelerated
        self.detach_timeout = detach_timeout
        self.host = Host(uri)
        # vm id -> (when asked, what its guest agent said); one entry per VM of the node
        self._guest_cache: dict[str, tuple[float, GuestInfo | None]] = {}

    def info(self) -> HypervisorInfo:
        return HypervisorInfo(
            name="libvirt",
            accelerated=self.accelerated,
            live_migration=self.tls_ready(),
            remote_console=True,  # VNC on the node's loopback, for the agent to proxy
        )

    def domain_config(self, spec: VmSpec) -> DomainConfig:
        """The domain this driver defines for `spec` (pure: touches nothing)."""
        return DomainConfig(
            virt_type="kvm" if self.accelerated else "qemu",
            name=spec.name,
            uuid=spec.id,
            memory_mib=spec.memory_mib,
            vcpus=spec.vcpus,
            disks=tuple(disk_config(d) for d in spec.disks),
            console_log=spec.console_log,
            metadata=InstanceMetadata(spec.id, spec.power_seq, dict(spec.labels)),
            nics=tuple(NicConfig(n.mac, n.bridge, n.mtu, n.device) for n in spec.nics),
            hostdevs=tuple(HostdevConfig(h.kind, h.address) for h in spec.hostdevs),
            machine="q35" if spec.machine == "q35" else "pc",
            firmware="efi" if spec.firmware == "uefi" else "bios",
            secure_boot=spec.secure_boot,
        )

    def _ours(self, vm_id: str) -> tuple[Guest, InstanceMetadata] | None:
        """The guest with this id and its metadata; None if unknown; error if not ours."""
        dom = self.host.lookup(vm_id)
        if dom is None:
            return None
        guest = Guest(self.host, dom)
        md = guest.metadata()
        if md is None:
            raise HypervisorError(f"domain {vm_id} ({guest.name}) exists but is not a Vauban VM")
        return guest, md

    def _require(self, vm_id: str) -> Guest:
        found = self._ours(vm_id)
        if found is None:
            raise HypervisorError(f"no VM {vm_id} on this node")
        return found[0]

    def domain_stats(self) -> list[tuple[str, dict[str, object]]]:
        """Statistics of the running domains, all in one libvirt call."""
        wanted = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
                  | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_INTERFACE
                  | libvirt.VIR_DOMAIN_STATS_BLOCK)
        return self.host.call(
            "read domain statistics",
            lambda c: [(dom.UUIDString(), dict(stats)) for dom, stats in c.getAllDomainStats(
                wanted, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)],
            idempotent=True)

    def list_vms(self) -> list[VmObservation]:
        """Every domain carrying our metadata; foreign domains are skipped."""
        vms: list[VmObservation] = []
        for dom in self.host.list_domains():
            try:
                vm = self._observe(Guest(self.host, dom))
            except HypervisorError:
                if self.host.lookup(dom.UUIDString()) is None:
                    continue  # undefined while we were listing
                raise
            if vm is not None:
                vms.append(vm)
        listed = {vm.id for vm in vms}
        for gone in [vm_id for vm_id in self._guest_cache if vm_id not in listed]:
            del self._guest_cache[gone]
        return vms

    def _observe(self, guest: Guest) -> VmObservation | None:
        xml = guest.xml()
        md = InstanceMetadata.from_domain_xml(xml)
        if md is None:
            return None
        try:
            console_log: Path | None = DomainConfig.from_xml(xml).console_log
        except (ValueError, ET.ParseError):
            console_log = None  # ours, but edited by hand beyond what we parse
        running = guest.is_running()
        persistent = guest.is_persistent()
        return VmObservation(id=md.instance_id, name=guest.name, running=running,
                             power_seq=md.power_seq, console_log=console_log,
                             labels=dict(md.labels),
                             guest=self._guest_info(md.instance_id, guest, xml)
                             if running and persistent else None,
                             persistent=persistent)

    def _guest_info(self, vm_id: str, guest: Guest, xml: str) -> GuestInfo | None:
        """The guest agent's report while its channel is connected, asked again at most
        every GUEST_INFO_REFRESH_S per VM (a report lists every VM: each agent is not
        asked each time, and one that does not answer costs its timeout that often)."""
        if not guest_agent_connected(xml):
            self._guest_cache.pop(vm_id, None)
            return None
        now = time.monotonic()
        cached = self._guest_cache.get(vm_id)
        if cached is not None and now - cached[0] < GUEST_INFO_REFRESH_S:
            return cached[1]
        info = guest.agent_info()
        self._guest_cache[vm_id] = (now, info)
        return info

    def define(self, spec: VmSpec) -> None:
        """Define a persistent, stopped VM; on failure nothing is defined."""
        try:
            uuidlib.UUID(spec.id)
        except ValueError as e:
            raise HypervisorError(f"VM id {spec.id!r} is not a UUID") from e
        if self.host.lookup(spec.id) is not None:
            # defineXML with a known UUID would silently replace that definition.
            raise HypervisorError(f"VM {spec.id} is already defined")
        xml = self.domain_config(spec).to_xml()
        with Reverter() as revert:
            guest = Guest(self.host, self.host.define(xml))
            revert.add(guest.undefine, f"undefine {spec.id}")
            md = guest.metadata()
            if md is None or md.instance_id != spec.id:
                raise HypervisorError(f"VM {spec.id} was defined without its metadata")
            revert.success()

    def start(self, vm_id: str) -> None:
        self._require(vm_id).start()

    def stop(self, vm_id: str, *, grace_seconds: float) -> None:
        guest = self._require(vm_id)
        if not guest.shutdown(grace_seconds):
            log.info("VM %s ignored ACPI power-off for %.0fs; forced off", vm_id, grace_seconds)

    def reset(self, vm_id: str) -> None:
        self._require(vm_id).reset()

    def undefine(self, vm_id: str) -> None:
        found = self._ours(vm_id)
        if found is not None:
            found[0].undefine()

    def set_power_seq(self, vm_id: str, power_seq: int) -> None:
        found = self._ours(vm_id)
        if found is None:
            raise HypervisorError(f"no VM {vm_id} on this node")
        guest, md = found
        guest.set_metadata(InstanceMetadata(md.instance_id, power_seq, md.labels))

    def migrate(self, vm_id: str, order: MigrationOrder, labels: dict[str, str],
                on_progress: Callable[[int], None]) -> None:
        """Peer-to-peer live migration over TLS (see migrate.py and HypervisorDriver)."""
        self._require(vm_id)
        dom = self.host.lookup(vm_id)
        if dom is None:
            raise HypervisorError(f"no VM {vm_id} on this node")
        migrate.migrate(dom, order, labels, on_progress)

    def abort_migration(self, vm_id: str) -> None:
        """libvirt's abortJob on the migration job (refused once the target runs it)."""
        dom = self.host.lookup(vm_id)
        if dom is None:
            raise HypervisorError(f"no VM {vm_id} on this node")
        try:
            dom.abortJob()
        except libvirt.libvirtError as e:
            raise HypervisorError(f"the migration of {vm_id} was not aborted: "
                                  f"{e.get_error_message()}") from e

    def migration_downtime_ms(self, vm_id: str) -> int | None:
        dom = self.host.lookup(vm_id)
        return migrate.completed_downtime_ms(dom) if dom is not None else None

    def ensure_ceph_secret(self, usage: str, key: str) -> None:
        """See HypervisorDriver; an ephemeral, private libvirt secret (see secrets.py)."""
        secrets.ensure_ceph_secret(self.host, usage, key)

    def list_disks(self, vm_id: str) -> list[DiskSpec]:
        """The disks in the live XML (the persistent one when stopped), in libvirt's order."""
        guest = self._require(vm_id)
        try:
            return [disk_spec(d) for d in parse_disks(guest.xml())]
        except ValueError as e:
            raise HypervisorError(f"VM {vm_id} has a disk this driver cannot read: {e}") from e

    def attach_disk(self, vm_id: str, disk: DiskSpec) -> None:
        """Hot-plug `disk` live and into the persistent definition (see HypervisorDriver).

        An RBD disk needs its ceph secret in libvirt first (ensure_ceph_secret).
        """
        guest = self._require(vm_id)
        if not VIRTIO_TARGET.fullmatch(disk.target):
            raise HypervisorError(f"disk target {disk.target!r} is not a virtio name (vdX)")
        if not guest.is_running():
            raise HypervisorError(f"VM {vm_id} is not running: disks are hot-plugged only "
                                  "into running VMs")
        for inactive in (False, True):
            if guest.disk_xml(disk.target, inactive=inactive) is not None:
                raise HypervisorError(f"disk target {disk.target} is already in use "
                                      f"on VM {vm_id}")
        try:
            guest.attach_device(disk_config(disk).to_xml(), live=True, config=True)
        except HypervisorError:
            self._undo_partial_attach(guest, disk.target)
            raise
        log.info("VM %s: attached disk %s", vm_id, disk.target)

    def _undo_partial_attach(self, guest: Guest, target: str) -> None:
        """After a failed attach: take the disk out of the guest again if libvirt left it there
        (it attaches live before it saves the definition)."""
        try:
            live = guest.disk_xml(target) if guest.is_running() else None
            if live is None:
                return
            guest.detach_device(live, live=True, config=False)
            if not guest.wait_disk_released(target, self.detach_timeout):
                log.warning("VM %s: %s attached by a failed attach is not released yet",
                            guest.uuid, target)
        except HypervisorError:
            log.exception("VM %s: could not undo a partial attach of %s", guest.uuid, target)

    def detach_disk(self, vm_id: str, target: str) -> None:
        """Unplug the disk live (if running) and from the definition; wait for the guest.

        A stopped VM only loses the disk from its definition. See HypervisorDriver.
        """
        guest = self._require(vm_id)
        if target == ROOT_DISK_TARGET:
            raise HypervisorError(f"the root disk cannot be detached (VM {vm_id}, {target})")
        live = guest.disk_xml(target) if guest.is_running() else None
        config = guest.disk_xml(target, inactive=True)
        if live is None and config is None:
            raise HypervisorError(f"VM {vm_id} has no disk {target}")
        # libvirt itself waits a few seconds for the guest inside the call: count that too
        deadline = time.monotonic() + self.detach_timeout
        guest.detach_device(live or config or "", live=live is not None,
                            config=config is not None)
        if live is not None and not guest.wait_disk_released(
                target, max(0.0, deadline - time.monotonic())):
            raise HypervisorError(
                f"VM {vm_id}: the guest did not release disk {target} within "
                f"{self.detach_timeout:.0f}s; it is gone from the definition, its removal "
                "from the running guest is still pending", retryable=True)
        log.info("VM %s: detached disk %s", vm_id, target)

    def resize_disk(self, vm_id: str, target: str, size_bytes: int) -> None:
        """Grow the running guest's disk to `size_bytes` (virDomainBlockResize); see
        HypervisorDriver. A stopped VM is left alone: it opens the grown image when it starts."""
        guest = self._require(vm_id)
        if target == ROOT_DISK_TARGET:
            raise HypervisorError(f"the root disk of VM {vm_id} is not grown live")
        if not guest.is_running():
            if guest.disk_xml(target, inactive=True) is None:
                raise HypervisorError(f"VM {vm_id} has no disk {target}")
            return
        if guest.disk_xml(target) is None:
            raise HypervisorError(f"VM {vm_id} has no disk {target}")
        current = guest.block_capacity(target)
        if size_bytes < current:
            # QEMU would shrink the image itself: the guest would lose data
            raise HypervisorError(f"VM {vm_id}: disk {target} is {current} bytes; "
                                  f"{size_bytes} would shrink it")
        if size_bytes == current:
            return
        guest.block_resize(target, size_bytes)
        log.info("VM %s: disk %s grown to %d bytes", vm_id, target, size_bytes)

    def freeze_filesystems(self, vm_id: str) -> bool:
        """libvirt's fsFreeze through the guest agent (see HypervisorDriver); a VM whose
        agent channel is not connected is not asked at all."""
        guest = self._require(vm_id)
        try:
            if not guest.is_running() or not guest_agent_connected(guest.xml()):
                return False
            frozen = guest.fs_freeze()
        except HypervisorError as e:
            log.warning("VM %s: filesystems not frozen, snapshots crash-consistent: %s",
                        vm_id, e)
            self._thaw_after_failed_freeze(guest)
            return False
        if frozen == 0:  # nothing the agent could freeze: nothing is quiesced
            self._thaw_after_failed_freeze(guest)
            return False
        log.info("VM %s: %d filesystems frozen", vm_id, frozen)
        return True

    def _thaw_after_failed_freeze(self, guest: Guest) -> None:
        """A freeze that timed out may still happen in the guest: ask it to thaw."""
        try:
            guest.fs_thaw()
        except HypervisorError as e:
            log.warning("VM %s: thaw after a failed freeze failed too: %s", guest.uuid, e)

    def thaw_filesystems(self, vm_id: str) -> None:
        """libvirt's fsThaw through the guest agent (see HypervisorDriver)."""
        guest = self._require(vm_id)
        try:
            if not guest.is_running():
                return  # a stopped guest holds nothing frozen
            thawed = guest.fs_thaw()
        except HypervisorError as e:
            log.error("VM %s: thawing its filesystems failed, they may still be frozen: %s",
                      vm_id, e)
            raise HypervisorError(f"VM {vm_id}: thawing its filesystems failed, they may "
                                  f"still be frozen: {e}", retryable=True) from e
        log.info("VM %s: %d filesystems thawed", vm_id, thawed)

    def open_console(self, vm_id: str, kind: ConsoleKind) -> ConsoleStream:
        dom = self.host.lookup(vm_id)
        if dom is None:
            raise HypervisorError(f"VM {vm_id} is not defined on this node")
        guest = Guest(self.host, dom)
        if kind == "log":
            return console.open_log(DomainConfig.from_xml(guest.xml()).console_log, guest.name)
        if not guest.is_running():
            raise HypervisorError(f"VM {guest.name} is not running on this node")
        return console.open_console(self.host.uri, vm_id, guest.name, guest.xml(), kind)
