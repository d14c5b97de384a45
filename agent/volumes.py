"""Converge the volumes this node looks after, and plug them into its VMs.

A steward node makes each of its desired volumes exist with the asked size and
snapshots, applies a rollback once (its sequence number is kept with the volume
in storage, so a new steward never repeats it), deletes volumes marked absent,
and hot-plugs or unplugs volumes of its running VMs. Errors are kept per volume
with the generation that asked, and reported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from agent.drivers.hypervisor.base import DiskSpec, HypervisorDriver, VmObservation
from agent.drivers.storage.base import StorageDriver, VolumeInfo
from agent.protocol import DesiredState, DesiredVolume, ObservedVolume

log = logging.getLogger(__name__)

GIB = 1024**3
RETRY_WINDOW_S = 300.0
FIRST_VOLUME_TARGET = "vdc"  # vda: root disk, vdb: cloud-init seed


@dataclass(frozen=True)
class VolumeFailure:
    generation: int
    message: str


class VolumeKeeper:
    def __init__(self, storage: StorageDriver, hypervisor: HypervisorDriver,
                 prepare: Callable[[], None] = lambda: None) -> None:
        self.storage = storage
        self.hypervisor = hypervisor
        self.prepare = prepare  # before a disk is plugged in (e.g. the Ceph secret is there)
        self.failures: dict[str, VolumeFailure] = {}
        self._retrying: dict[str, float] = {}  # volume id -> when a retryable error began

    def plan(self, desired: DesiredState,
             own_vms: dict[str, VmObservation]) -> list[tuple[str, Callable[[], None]]]:
        """The work one pass needs, as (lock key, task): one task per volume and one per
        running VM whose plugged volumes differ. Tasks record failures, never raise."""
        if not desired.volumes and not any(vm.volumes for vm in desired.vms):
            return []
        if not self.storage.info().volumes:
            for dv in desired.volumes:
                self._fail(dv.id, desired.generation, "this node's storage has no volumes")
            return []
        existing = {v.id: v for v in self.storage.list_volumes()}
        work: list[tuple[str, Callable[[], None]]] = []
        for dv in desired.volumes:
            if self._needs_work(dv, existing.get(dv.id), desired.generation):
                work.append((f"volume:{dv.id}", partial(
                    self._guard, dv.id, desired.generation,
                    partial(self._converge, dv, existing))))
        for vm in desired.vms:
            obs = own_vms.get(vm.id)
            if obs is None or not obs.running:
                continue  # volumes are plugged into running VMs only
            wanted = {a.target: a.volume_id for a in vm.volumes}
            plugged = {t: v for t, (v, _d) in self._volume_disks(vm.id).items()}
            if plugged != wanted:
                work.append((vm.id, partial(self._plug, vm.id, wanted, desired.generation)))
        return work

    def _needs_work(self, dv: DesiredVolume, info: VolumeInfo | None, generation: int) -> bool:
        failure = self.failures.get(dv.id)
        if failure is not None and failure.generation >= generation:
            return False  # failed for this very request: wait for a new one
        if info is None:
            return dv.present
        if not dv.present:
            return True
        return (info.size_bytes < dv.size_gib * GIB
                or sorted(info.snapshots) != sorted(dv.snapshots)
                or (dv.rollback is not None and dv.rollback.seq > info.rollback_seq))

    def _guard(self, vol_id: str, generation: int, work: Callable[[], object]) -> None:
        try:
            work()
        except Exception as e:  # reported on the volume; the agent goes on
            log.warning("volume %s: %s", vol_id, e)
            first = self._retrying.setdefault(vol_id, time.monotonic())
            # a retryable error (a guest slow to let go of a disk) is only reported once
            # it has lasted; meanwhile every pass tries again
            if not getattr(e, "retryable", False) or time.monotonic() - first > RETRY_WINDOW_S:
                self._fail(vol_id, generation, str(e))
        else:
            self.failures.pop(vol_id, None)
            self._retrying.pop(vol_id, None)

    def _fail(self, vol_id: str, generation: int, message: str) -> None:
        self.failures[vol_id] = VolumeFailure(generation, message)

    def _converge(self, dv: DesiredVolume, existing: dict[str, VolumeInfo]) -> None:
        info = existing.get(dv.id)
        if not dv.present:
            if info is not None:
                self.storage.delete_volume(dv.id)
            return
        if info is None:
            if dv.clone_of is not None:
                self.storage.clone_volume(dv.clone_of.volume_id, dv.clone_of.snapshot, dv.id)
                if dv.size_gib * GIB > self._size(dv.id):
                    self.storage.resize_volume(dv.id, dv.size_gib)
            else:
                self.storage.create_volume(dv.id, dv.size_gib, dv.pool)
            info = self._info(dv.id)
        if info.size_bytes < dv.size_gib * GIB:
            self.storage.resize_volume(dv.id, dv.size_gib)
        for snap in dv.snapshots:
            if snap not in info.snapshots:
                self.storage.snapshot_volume(dv.id, snap)
        for snap in info.snapshots:
            if snap not in dv.snapshots:
                self.storage.delete_volume_snapshot(dv.id, snap)
        if dv.rollback is not None and dv.rollback.seq > info.rollback_seq:
            self.storage.rollback_volume(dv.id, dv.rollback.snapshot, dv.rollback.seq)

    def _info(self, vol_id: str) -> VolumeInfo:
        for v in self.storage.list_volumes():
            if v.id == vol_id:
                return v
        raise LookupError(f"volume {vol_id} vanished")

    def _size(self, vol_id: str) -> int:
        return self._info(vol_id).size_bytes

    def _plug(self, vm_id: str, wanted: dict[str, str], generation: int) -> None:
        """Attach what is wanted and missing, detach volumes no longer wanted."""
        plugged = self._volume_disks(vm_id)
        for target, (vol_id, _disk) in plugged.items():
            if wanted.get(target) != vol_id:
                self._guard(vol_id, generation,
                            partial(self.hypervisor.detach_disk, vm_id, target))
        for target, vol_id in wanted.items():
            if target not in plugged or plugged[target][0] != vol_id:
                self._guard(vol_id, generation, partial(self._attach, vm_id, vol_id, target))

    def _attach(self, vm_id: str, vol_id: str, target: str) -> None:
        self.prepare()
        self.hypervisor.attach_disk(vm_id, self.storage.volume_disk(vol_id, target))

    def _volume_disks(self, vm_id: str) -> dict[str, tuple[str, DiskSpec]]:
        """target -> (volume id, disk) for the VM's disks that are volumes."""
        result = {}
        for disk in self.hypervisor.list_disks(vm_id):
            vol_id = self.storage.volume_of(disk)
            if vol_id is not None:
                result[disk.target] = (vol_id, disk)
        return result

    def observe(self, desired: DesiredState | None,
                own_vms: dict[str, VmObservation]) -> list[ObservedVolume]:
        """The desired volumes as storage shows them, with where they are plugged in."""
        if desired is None or not desired.volumes or not self.storage.info().volumes:
            return []
        existing = {v.id: v for v in self.storage.list_volumes()}
        plugged: dict[str, tuple[str, str]] = {}
        for vm_id, vm in own_vms.items():
            if vm.running:
                for target, (vol_id, _d) in self._volume_disks(vm_id).items():
                    plugged[vol_id] = (vm_id, target)
        result = []
        for dv in desired.volumes:
            info, failure = existing.get(dv.id), self.failures.get(dv.id)
            if info is None and failure is None:
                continue  # absent and fine: not made yet, or deleted
            where = plugged.get(dv.id)
            result.append(ObservedVolume(
                id=dv.id, size_bytes=info.size_bytes if info else 0,
                used_bytes=info.used_bytes if info else 0,
                snapshots=list(info.snapshots) if info else [],
                rollback_seq=info.rollback_seq if info else 0,
                attached_to=where[0] if where else None, target=where[1] if where else None,
                error=failure.message if failure else None,
                failed_generation=failure.generation if failure else None,
            ))
        return result
