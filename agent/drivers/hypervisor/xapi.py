"""The hypervisor driver of an XCP-ng pool, over XAPI.

XAPI chooses a VM's UUID, so a VM of ours is found by `other_config["vauban.instance"]`
(our instance id); `vauban.power_seq` and `vauban.labels` (JSON) ride beside it. What
the driver reads comes from the pool's event cache only (PoolCache: no call per VM);
what it changes goes through PoolOps (`Async.*` tasks, each destroyed), and then it
waits until the cache shows the change, so the reconciler's next read sees it.
A VM is made as `xe vm-install` does: VM.clone of a template, fields set, VM.provision;
then its disks (VBDs of VDIs) and NICs (VIFs on pool networks found by name). Disks
that are local files (the cloud-init seed) are imported into VDIs by `import_file`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.drivers.hypervisor.base import (
    ConsoleStream,
    DiskSpec,
    HypervisorDriver,
    HypervisorError,
    HypervisorInfo,
    RbdSource,
    VdiSource,
    VmObservation,
    VmSpec,
)
from agent.drivers.xapi.console import open_console
from agent.drivers.xapi.errors import XapiError
from agent.drivers.xapi.keys import DISK, INSTANCE, LABELS, POWER_SEQ, SELF, our_vm
from agent.drivers.xapi.tasks import PoolOps, TaskPending
from agent.protocol import ConsoleKind, MigrationOrder
from agent.revert import Reverter

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "Other install media"
CACHE_WAIT = 300.0  # seconds to wait for the pool's events to show a change we made
MiB = 1024 * 1024

# (path, VDI name, other_config) -> UUID of a new VDI holding the file's bytes
ImportFile = Callable[[Path, str, dict[str, str]], str]


def disk_target(userdevice: str) -> str:
    """The guest device name of VBD position `userdevice` ("0" → "vda")."""
    n = int(userdevice) if userdevice.isdigit() else 0
    return "vd" + chr(ord("a") + n) if n < 26 else f"vd{n}"


class XapiHypervisor(HypervisorDriver):
    """VMs of one XCP-ng pool (see the module docstring)."""

    def __init__(self, ops: PoolOps, import_file: ImportFile, *,
                 template: str = DEFAULT_TEMPLATE, cache_wait: float = CACHE_WAIT) -> None:
        self.ops, self.cache = ops, ops.cache
        self.import_file = import_file
        self.template = template
        self.cache_wait = cache_wait

    def info(self) -> HypervisorInfo:
        return HypervisorInfo("xapi", accelerated=True, live_migration=False,
                              remote_console=True)

    # --- reading the cache ---------------------------------------------------------

    def _valid(self) -> None:
        if not self.cache.valid:
            raise HypervisorError(f"pool {self.ops.label}: not readable now "
                                  f"({self.cache.problem})", retryable=True)

    def _find(self, vm_id: str) -> tuple[str, dict[str, Any]] | None:
        """(XAPI uuid, cached record) of our VM `vm_id`, or None."""
        for uuid, record in self.cache.all("VM").items():
            if our_vm(record) == vm_id:
                return uuid, record
        return None

    def _get(self, vm_id: str) -> tuple[str, dict[str, Any]]:
        self._valid()
        found = self._find(vm_id)
        if found is None:
            raise HypervisorError(f"pool {self.ops.label}: no VM {vm_id}")
        return found

    def _await(self, holds: Callable[[], bool], what: str) -> None:
        """Wait until the cache shows `holds()` (our change arrived as an event)."""
        if not self.cache.wait_for(lambda _: holds(), self.cache_wait):
            raise HypervisorError(f"pool {self.ops.label}: its events never showed {what}",
                                  retryable=True)

    def _power(self, vm_id: str) -> str | None:
        found = self._find(vm_id)
        return str(found[1]["power_state"]) if found is not None else None

    def list_vms(self) -> list[VmObservation]:
        """Our VMs as the cache has them; HypervisorError(retryable) while the pool
        cannot be read (so that nothing is recreated meanwhile). Paused and suspended
        VMs are reported stopped."""
        self._valid()
        vms = []
        for uuid, record in self.cache.all("VM").items():
            if our_vm(record) is None:
                continue
            config = record["other_config"]
            if record["power_state"] in ("Paused", "Suspended"):
                log.info("pool %s: VM %s is %s: reported stopped", self.ops.label,
                         config[INSTANCE], record["power_state"].lower())
            seq = config.get(POWER_SEQ, "0")
            vms.append(VmObservation(
                id=config[INSTANCE], name=str(record["name_label"]),
                running=record["power_state"] == "Running",
                power_seq=int(seq) if seq.isdigit() else 0, console_log=None,
                labels=_labels(config.get(LABELS, "")), hypervisor_uuid=uuid))
        return vms

    def list_disks(self, vm_id: str) -> list[DiskSpec]:
        """The VM's VBDs with a VDI, in userdevice order, as DiskSpecs of VdiSources."""
        uuid, _ = self._get(vm_id)
        disks = []
        vbds = [v for v in self.cache.all("VBD").values() if v["VM"] == uuid and v["VDI"]]
        for vbd in sorted(vbds, key=lambda v: int(v["userdevice"] or 0)):
            vdi = self.cache.get("VDI", vbd["VDI"])
            if vdi is None:
                continue
            disks.append(DiskSpec(source=VdiSource(str(vdi["SR"]), str(vdi["uuid"])),
                                  format="raw", target=disk_target(str(vbd["userdevice"])),
                                  readonly=vbd["mode"] == "RO"))
        return disks

    # --- define ----------------------------------------------------------------------

    def _template(self) -> str:
        for uuid, record in self.cache.all("VM").items():
            if record.get("is_a_template") and record.get("name_label") == self.template:
                return uuid
        raise HypervisorError(f"pool {self.ops.label}: no VM template {self.template!r}")

    def _network(self, name: str) -> str:
        for uuid, record in self.cache.all("network").items():
            if name in (record.get("name_label"), record.get("bridge")):
                return uuid
        raise HypervisorError(f"pool {self.ops.label}: no network named {name!r}")

    def define(self, spec: VmSpec) -> None:
        """Clone the template, set memory, vCPUs, boot and our keys, provision, then
        attach disks and NICs. On failure the VM and the VDIs imported for it are
        destroyed again (disks given as VdiSources are left alone)."""
        if spec.hostdevs:
            raise self._refuse("pass host devices (GPUs) through to VMs")
        self._valid()
        if self._find(spec.id) is not None:
            raise HypervisorError(f"pool {self.ops.label}: VM {spec.id} is already defined")
        template = self._template()
        networks = [self._network(nic.bridge) for nic in spec.nics]
        with Reverter() as revert:
            vm = self.ops.run("VM.clone", self.ops.ref("VM", template), spec.name)
            uuid = self.ops.uuid_of_new("VM", vm)
            revert.add(lambda: self._destroy_vm(uuid), "destroy the VM")
            self._configure(vm, uuid, spec)
            self.ops.run("VM.provision", vm)
            for position, disk in enumerate(spec.disks):
                vdi = self._disk_vdi(spec, disk, revert)
                self.ops.call("VBD.create", {
                    "VM": vm, "VDI": self.ops.ref("VDI", vdi), "userdevice": str(position),
                    "bootable": position == 0, "mode": "RO" if disk.readonly else "RW",
                    "type": "Disk", "empty": False, "unpluggable": position != 0,
                    "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})
            for device, (nic, network) in enumerate(zip(spec.nics, networks, strict=True)):
                self.ops.call("VIF.create", {
                    "device": str(device), "network": self.ops.ref("network", network),
                    "VM": vm, "MAC": nic.mac, "MTU": nic.mtu, "other_config": {},
                    "qos_algorithm_type": "", "qos_algorithm_params": {}})
            self._await(lambda: self._find(spec.id) is not None, f"VM {spec.id} defined")
            revert.success()

    def _configure(self, vm: str, uuid: str, spec: VmSpec) -> None:
        """Memory, vCPUs, boot firmware and our keys on the (halted) clone `vm` (`uuid`)."""
        size = spec.memory_mib * MiB
        self.ops.call("VM.set_memory_limits", vm, size, size, size, size)
        # VCPUs_at_startup may never exceed VCPUs_max: the max first (templates have 1)
        self.ops.call("VM.set_VCPUs_max", vm, max(spec.vcpus, 1))
        self.ops.call("VM.set_VCPUs_at_startup", vm, spec.vcpus)
        boot = {"order": "c"}
        if spec.firmware == "uefi":
            boot["firmware"] = "uefi"
            if spec.secure_boot:  # one key: set_platform would drop the template's flags
                self.ops.call("VM.remove_from_platform", vm, "secureboot")
                self.ops.call("VM.add_to_platform", vm, "secureboot", "true")
        self.ops.call("VM.set_HVM_boot_params", vm, boot)
        self.ops.call("VM.remove_from_other_config", vm, "default_template")
        for key, value in ((POWER_SEQ, str(spec.power_seq)),
                           (LABELS, json.dumps(spec.labels, sort_keys=True)), (SELF, uuid),
                           (INSTANCE, spec.id)):  # the instance key last: it makes it ours
            self.ops.call("VM.add_to_other_config", vm, key, value)

    def _disk_vdi(self, spec: VmSpec, disk: DiskSpec, revert: Reverter) -> str:
        """The UUID of the VDI behind `disk`; a local file is imported first."""
        if isinstance(disk.source, VdiSource):
            return disk.source.vdi_uuid
        if isinstance(disk.source, RbdSource):
            raise HypervisorError(f"pool {self.ops.label}: an XCP-ng pool has no supported "
                                  "Ceph RBD storage repository")
        vdi = self.import_file(disk.source, f"{spec.name}-{disk.target}", {INSTANCE: spec.id})
        revert.add(lambda: self._destroy_vdi(vdi), f"destroy imported VDI {vdi}")
        return vdi

    # --- power ---------------------------------------------------------------------

    def start(self, vm_id: str) -> None:
        """VM.start; a running VM (seen in the cache, or as xapi's answer) is a no-op."""
        uuid, record = self._get(vm_id)
        if record["power_state"] == "Running":
            return
        try:
            self.ops.run("VM.start", self.ops.ref("VM", uuid), False, False)
        except XapiError as e:
            if e.code != "VM_BAD_POWER_STATE" or e.params[2:3] != ["running"]:
                raise
        self._await(lambda: self._power(vm_id) == "Running", f"VM {vm_id} running")

    def stop(self, vm_id: str, *, grace_seconds: float) -> None:
        """VM.clean_shutdown, and VM.hard_shutdown once `grace_seconds` passed (at once
        with no grace, a guest without PV drivers, or a VM paused or suspended)."""
        uuid, record = self._get(vm_id)
        if record["power_state"] == "Halted":
            return
        ref = self.ops.ref("VM", uuid)
        if grace_seconds > 0 and record["power_state"] == "Running":
            clean = self.ops.submit("VM.clean_shutdown", ref)
            try:
                self.ops.wait(clean, grace_seconds)
            except TaskPending:
                log.info("pool %s: VM %s did not shut down within %.0f s: forced off",
                         self.ops.label, vm_id, grace_seconds)
                self._hard_shutdown(ref)
            except XapiError as e:
                if e.code not in ("VM_MISSING_PV_DRIVERS", "VM_BAD_POWER_STATE"):
                    raise
                self._hard_shutdown(ref)
            finally:
                self.ops.destroy(clean)
        else:
            self._hard_shutdown(ref)
        self._await(lambda: self._power(vm_id) == "Halted", f"VM {vm_id} halted")

    def _hard_shutdown(self, ref: str) -> None:
        """VM.hard_shutdown; a VM halted already is fine."""
        try:
            self.ops.run("VM.hard_shutdown", ref)
        except XapiError as e:
            if e.code != "VM_BAD_POWER_STATE" or e.params[2:3] != ["halted"]:
                raise

    def reset(self, vm_id: str) -> None:
        """VM.hard_reboot; a stopped VM raises (xapi's VM_BAD_POWER_STATE)."""
        uuid, _ = self._get(vm_id)
        self.ops.run("VM.hard_reboot", self.ops.ref("VM", uuid))

    def set_power_seq(self, vm_id: str, power_seq: int) -> None:
        uuid, _ = self._get(vm_id)
        ref = self.ops.ref("VM", uuid)
        self.ops.call("VM.remove_from_other_config", ref, POWER_SEQ)
        self.ops.call("VM.add_to_other_config", ref, POWER_SEQ, str(power_seq))
        self._await(lambda: (self._find(vm_id) or ("", {"other_config": {}}))[1]
                    ["other_config"].get(POWER_SEQ) == str(power_seq),
                    f"VM {vm_id}'s power sequence")

    # --- undefine --------------------------------------------------------------------

    def undefine(self, vm_id: str) -> None:
        """Force the VM off, destroy it, then destroy each VDI made for it (tagged with
        its instance id: its seed) that no VBD of another VM uses. Its root disk is kept,
        as on KVM: the storage driver's delete_vm_disks removes it once the controller
        lists the VM as deleted. An unknown id is a no-op."""
        self._valid()
        found = self._find(vm_id)
        if found is None:
            return
        uuid, record = found
        if record["power_state"] != "Halted":
            self._hard_shutdown(self.ops.ref("VM", uuid))
        vbds = self.cache.all("VBD")
        owned = {v["VDI"] for v in vbds.values() if v["VM"] == uuid and v["VDI"]}
        self._destroy_vm(uuid)
        for vdi in sorted(owned):
            record_vdi = self.cache.get("VDI", vdi)
            config = record_vdi["other_config"] if record_vdi is not None else {}
            if config.get(INSTANCE) != vm_id or config.get(DISK) == "root":
                continue
            if any(v["VDI"] == vdi and v["VM"] != uuid for v in vbds.values()):
                log.info("pool %s: VDI %s of VM %s is attached to another VM: kept",
                         self.ops.label, vdi, vm_id)
                continue
            self._destroy_vdi(vdi)
        self._await(lambda: self._find(vm_id) is None, f"VM {vm_id} destroyed")

    def _destroy_vm(self, uuid: str) -> None:
        self._forgiving("VM.destroy", "VM", uuid)

    def _destroy_vdi(self, uuid: str) -> None:
        self._forgiving("VDI.destroy", "VDI", uuid)

    def _forgiving(self, method: str, cls: str, uuid: str) -> None:
        """`method` on object `uuid`; one that is gone already is fine."""
        try:
            self.ops.call(method, self.ops.ref(cls, uuid))
        except XapiError as e:
            if e.code not in ("UUID_INVALID", "HANDLE_INVALID"):
                raise

    # --- what a pool refuses -----------------------------------------------------------

    def _refuse(self, what: str) -> HypervisorError:
        return HypervisorError(f"an XCP-ng pool cannot {what} through Vauban")

    def migrate(self, vm_id: str, order: MigrationOrder, labels: dict[str, str],
                on_progress: Callable[[int], None]) -> None:
        raise self._refuse("migrate VMs")

    def ensure_ceph_secret(self, usage: str, key: str) -> None:
        raise self._refuse("use Ceph RBD disks (no supported RBD storage repository)")

    def attach_disk(self, vm_id: str, disk: DiskSpec) -> None:
        raise self._refuse("hot-plug disks")

    def detach_disk(self, vm_id: str, target: str) -> None:
        raise self._refuse("hot-unplug disks")

    def resize_disk(self, vm_id: str, target: str, size_bytes: int) -> None:
        raise self._refuse("grow disks live")

    def open_console(self, vm_id: str, kind: ConsoleKind) -> ConsoleStream:
        """The VM's VNC (rfb) console, tunnelled by CONNECT from the host it runs on under
        that host's pin. XCP-ng gives no serial console nor log to its API's clients."""
        if kind != "vnc":
            raise HypervisorError(f"pool {self.ops.label}: XCP-ng gives a VM's graphical "
                                  "console (VNC) only; no serial console nor log")
        uuid, _ = self._get(vm_id)
        with self.ops.exclusive() as client:
            return open_console(client, uuid, self.cache)


def _labels(text: str) -> dict[str, str]:
    """The labels kept as JSON in other_config (nothing when unreadable)."""
    try:
        labels = json.loads(text) if text else {}
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}
