"""LibvirtDriver: the hypervisor contract on libvirt/QEMU (policy only; bindings in host/guest)."""

from __future__ import annotations

import logging
import uuid as uuidlib
import xml.etree.ElementTree as ET
from pathlib import Path

from agent.drivers.hypervisor.base import (
    HypervisorDriver,
    HypervisorError,
    HypervisorInfo,
    VmObservation,
    VmSpec,
)
from agent.drivers.hypervisor.libvirt.config import DiskConfig, DomainConfig, InstanceMetadata
from agent.drivers.hypervisor.libvirt.guest import Guest
from agent.drivers.hypervisor.libvirt.host import Host
from agent.revert import Reverter

log = logging.getLogger(__name__)


class LibvirtDriver(HypervisorDriver):
    """VMs as persistent libvirt domains marked with our metadata.

    `accelerated` comes from the KVM probe: domains are type "kvm" with the host
    CPU passed through when True, else type "qemu" (TCG emulation).
    """

    def __init__(self, uri: str = "qemu:///system", *, accelerated: bool) -> None:
        self.uri = uri
        self.accelerated = accelerated
        self.host = Host(uri)

    def info(self) -> HypervisorInfo:
        return HypervisorInfo(
            name="libvirt",
            accelerated=self.accelerated,
            live_migration=False,  # not implemented by this driver yet
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
            disks=tuple(DiskConfig(d.path, d.format, d.target, d.readonly) for d in spec.disks),
            console_log=spec.console_log,
            metadata=InstanceMetadata(spec.id, spec.power_seq, dict(spec.labels)),
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

    def list_vms(self) -> list[VmObservation]:
        """Every domain carrying our metadata; foreign domains are skipped."""
        vms = []
        for dom in self.host.list_domains():
            try:
                vm = self._observe(Guest(self.host, dom))
            except HypervisorError:
                if self.host.lookup(dom.UUIDString()) is None:
                    continue  # undefined while we were listing
                raise
            if vm is not None:
                vms.append(vm)
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
        return VmObservation(id=md.instance_id, name=guest.name, running=guest.is_running(),
                             power_seq=md.power_seq, console_log=console_log,
                             labels=dict(md.labels))

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
