"""Converge the volumes this node looks after, and plug them into its VMs.

A steward node makes each of its desired volumes exist with the asked size and
snapshots, applies a rollback once (its sequence number is kept with the volume
in storage, so a new steward never repeats it), deletes volumes marked absent,
hot-plugs or unplugs volumes of its running VMs, takes unwanted volumes out of
the definition of its stopped VMs, and tells a running VM when its volume grew.
Failures go to the agent's one ledger (`agent.retry`) with what was asked of the
volume as their request (its size, snapshots, rollback; for a plug, the VM and
target), so an unrelated change on the node neither retries nor resets them: they
are retried by its policy, reported with the node, and shown on the volume once
final. They are forgotten on success and once the action no longer applies (the
volume left this node's desired state, its VM stopped or no longer wants it).

New snapshots of a volume plugged into a running VM are taken inside one freeze of
the guest's filesystems (through its guest agent), thawed right after, also when a
snapshot failed; each snapshot is kept as quiesced or not (crash-consistent). A
failed thaw is the volume's failure, and its retry thaws first; a keeper's first
pass thaws every running VM with a volume (an agent stopped mid-freeze).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from functools import partial

from agent.drivers.hypervisor.base import (
    DiskSpec,
    HypervisorDriver,
    HypervisorError,
    VmObservation,
)
from agent.drivers.storage.base import StorageDriver, VolumeInfo
from agent.protocol import DesiredState, DesiredVolume, ObservedVolume
from agent.retry import Entry, FailureLedger

log = logging.getLogger(__name__)

GIB = 1024**3
FIRST_VOLUME_TARGET = "vdc"  # vda: root disk, vdb: cloud-init seed

Work = list[tuple[str, Callable[[], bool]]]  # (lock key, task: whether it ended well)
Applies = set[tuple[str, str]]  # (volume id, action) whose failure, if any, stands


def volume_request(dv: DesiredVolume) -> str:
    """What is asked of a volume (all but its name): a change of it is tried afresh."""
    return dv.model_dump_json(exclude={"name"})


class VolumeKeeper:
    def __init__(self, storage: StorageDriver, hypervisor: HypervisorDriver,
                 prepare: Callable[[], None] = lambda: None,
                 ledger: FailureLedger | None = None) -> None:
        self.storage = storage
        self.hypervisor = hypervisor
        self.prepare = prepare  # before a disk is plugged in (e.g. the Ceph secret is there)
        self.ledger = ledger or FailureLedger()
        # one freeze at a time per VM: a second one would fail, and its clean-up thaw
        # would thaw the guest under the first one's snapshots
        self._freeze_locks: dict[str, threading.Lock] = {}
        self._freeze_guard = threading.Lock()
        self._thaw_owed: set[str] = set()  # VMs whose thaw failed: maybe still frozen
        self._thaw_at_start = True  # an agent that stopped mid-freeze left its guest frozen

    def plan(self, desired: DesiredState,
             own_vms: dict[str, VmObservation]) -> tuple[Work, bool]:
        """The work one pass needs, as (lock key, task): one task per volume and one per
        VM whose plugged volumes differ (a stopped VM only for volumes to take out).
        Tasks record failures, never raise, and return whether they did all they were
        asked. With it, whether an action of `desired` failed and is not tried in this
        pass (it waits for its retry or a new request): its generation is not applied.
        Failures of actions this pass finds no longer needed are forgotten."""
        with self._freeze_guard:  # a stopped VM holds nothing frozen
            self._thaw_owed &= {vm_id for vm_id, vm in own_vms.items() if vm.running}
        work, applies, waiting = self._plan(desired, own_vms)
        for e in self.ledger.of_kind("volume"):
            if (e.object_id, e.action) not in applies:
                self.ledger.succeeded("volume", e.object_id, e.action)
        if self._thaw_at_start:
            self._thaw_at_start = False
            work = [*self._start_thaws(own_vms), *work]
        return work, waiting

    def _start_thaws(self, own_vms: dict[str, VmObservation]) -> Work:
        """On this keeper's first pass, a thaw of each running VM with a volume plugged in:
        finally-blocks do not outlive the process, so a guest frozen by an agent that was
        stopped before its thaw would stay frozen. A thaw of a guest not frozen changes
        nothing; one that fails is only logged (most are VMs without a guest agent)."""
        if not self.storage.info().volumes:
            return []
        work: Work = []
        for vm_id, vm in own_vms.items():
            try:
                plugged = vm.running and bool(self._volume_disks(vm_id))
            except HypervisorError:
                continue  # gone meanwhile
            if plugged:  # a key of its own: never skipped as busy, never tried again
                work.append((f"thaw:{vm_id}", partial(self._thaw_quietly, vm_id)))
        return work

    def _freeze_lock(self, vm_id: str) -> threading.Lock:
        with self._freeze_guard:
            return self._freeze_locks.setdefault(vm_id, threading.Lock())

    def _thaw_quietly(self, vm_id: str) -> bool:
        with self._freeze_lock(vm_id):  # never under a snapshot's fresh freeze
            try:
                self.hypervisor.thaw_filesystems(vm_id)
            except Exception as e:  # no guest agent, most likely: nothing was frozen
                log.info("VM %s: no thaw at the agent's start: %s", vm_id, e)
        return True

    def _plan(self, desired: DesiredState,
              own_vms: dict[str, VmObservation]) -> tuple[Work, Applies, bool]:
        if not desired.volumes and not any(vm.volumes for vm in desired.vms):
            return [], set(), False
        if not self.storage.info().volumes:
            for dv in desired.volumes:
                if self.ledger.may_try("volume", dv.id, "converge", volume_request(dv)):
                    self.ledger.failed("volume", dv.id, "converge", volume_request(dv),
                                       "this node's storage has no volumes",
                                       seq=desired.generation)
            return [], {(dv.id, "converge") for dv in desired.volumes}, True
        existing = {v.id: v for v in self.storage.list_volumes()}
        plugged = {vm.id: {t: v for t, (v, _d) in self._volume_disks(vm.id).items()}
                   for vm in desired.vms if vm.id in own_vms}
        live = {vol_id: (vm_id, target) for vm_id, disks in plugged.items()
                if own_vms[vm_id].running for target, vol_id in disks.items()}
        work: Work = []
        applies: Applies = set()
        waiting = False
        for dv in desired.volumes:
            if not self._differs(dv, existing.get(dv.id), live.get(dv.id)):
                continue
            applies.add((dv.id, "converge"))
            # failed for this very request: waits for its retry or a new request
            if self.ledger.may_try("volume", dv.id, "converge", volume_request(dv)):
                work.append((f"volume:{dv.id}", partial(
                    self._guard, dv.id, "converge", volume_request(dv), desired.generation,
                    partial(self._converge, dv, existing, live.get(dv.id)))))
            else:
                waiting = True
        for vm in desired.vms:
            if vm.id not in own_vms or vm.migrate_to or vm.incoming_from:
                continue  # a VM on the move keeps the volumes it has until it arrived
            running = own_vms[vm.id].running
            wanted = {a.target: a.volume_id for a in vm.volumes}
            unwanted = {t: v for t, v in plugged[vm.id].items() if wanted.get(t) != v}
            # a stopped VM only loses disks (from its definition); it gains them once running
            missing = {t: v for t, v in wanted.items()
                       if running and plugged[vm.id].get(t) != v}
            applies |= {(v, "detach") for v in unwanted.values()}
            applies |= {(v, "attach") for v in missing.values()}
            if unwanted or missing:
                work.append((vm.id, partial(self._plug, vm.id, wanted, desired.generation,
                                            attach=running)))
        return work, applies, waiting

    def _differs(self, dv: DesiredVolume, info: VolumeInfo | None,
                 plugged_in: tuple[str, str] | None = None) -> bool:
        """Whether the volume is not yet what `dv` asks (its converge action applies)."""
        if plugged_in is not None and self._converge_failed(dv.id):
            return True  # its running VM may not have been told of a grow yet
        if info is None:
            return dv.present
        if not dv.present:
            return True
        return (info.size_bytes < dv.size_gib * GIB
                or sorted(info.snapshots) != sorted(dv.snapshots)
                or (dv.rollback is not None and dv.rollback.seq > info.rollback_seq))

    def _guard(self, vol_id: str, action: str, request: Hashable, generation: int,
               work: Callable[[], object]) -> bool:
        """Run `work` for `request` (asked in `generation`); whether it succeeded. A
        failure goes to the ledger (reported, retried by its policy), never raised."""
        try:
            work()
        except Exception as e:  # reported on the volume; the agent goes on
            log.warning("volume %s: %s failed: %s", vol_id, action, e)
            self.ledger.failed("volume", vol_id, action, request, e, seq=generation)
            return False
        self.ledger.succeeded("volume", vol_id, action)
        return True

    def _final_failure(self, vol_id: str) -> Entry | None:
        """The volume's latest request given up on (what the volume shows)."""
        final = [e for e in self.ledger.of("volume", vol_id) if e.final]
        return max(final, key=lambda e: e.seq or 0, default=None)

    def _converge(self, dv: DesiredVolume, existing: dict[str, VolumeInfo],
                  plugged_in: tuple[str, str] | None = None) -> None:
        """Make the volume what `dv` asks; `plugged_in` is the (VM, target) of the
        running VM it is plugged into, which is told when the volume grows (the guest
        sees the new capacity at once). Should telling it fail, the failure is retried
        by the ledger's policy like any other; a stopped VM reads the size at its start."""
        info = existing.get(dv.id)
        if plugged_in is not None and self._owes_thaw(plugged_in[0]):
            with self._freeze_lock(plugged_in[0]):  # an earlier thaw failed: maybe frozen
                self._thaw(plugged_in[0])
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
        grow = info.size_bytes < dv.size_gib * GIB
        if grow:
            self.storage.resize_volume(dv.id, dv.size_gib)
        if plugged_in is not None and (grow or self._converge_failed(dv.id)):
            # also on a retry: the image may have grown in a try that failed to tell the VM
            self.hypervisor.resize_disk(*plugged_in, self._size(dv.id))
        new = [snap for snap in dv.snapshots if snap not in info.snapshots]
        if new:
            self._snapshot(dv.id, new, plugged_in[0] if plugged_in is not None else None)
        for snap in info.snapshots:
            if snap not in dv.snapshots:
                self.storage.delete_volume_snapshot(dv.id, snap)
        if dv.rollback is not None and dv.rollback.seq > info.rollback_seq:
            self.storage.rollback_volume(dv.id, dv.rollback.snapshot, dv.rollback.seq)

    def _snapshot(self, vol_id: str, snaps: list[str], vm_id: str | None) -> None:
        """Take `snaps` of the volume. Plugged into running VM `vm_id`: all inside one
        freeze of its filesystems (each kept as quiesced), thawed right after whether
        they were taken or not; a guest that did not freeze gets crash-consistent ones.
        A failed thaw raises (retryable), naming a snapshot failure beside it."""
        if vm_id is None:
            for snap in snaps:
                self.storage.snapshot_volume(vol_id, snap)
            return
        with self._freeze_lock(vm_id):
            frozen = self.hypervisor.freeze_filesystems(vm_id)
            if not frozen:
                log.warning("volume %s: VM %s did not freeze its filesystems: snapshots %s "
                            "are crash-consistent", vol_id, vm_id, ", ".join(snaps))
            failure: Exception | None = None
            try:
                for snap in snaps:
                    self.storage.snapshot_volume(vol_id, snap, quiesced=frozen)
            except Exception as e:
                failure = e
                raise
            finally:
                if frozen:
                    self._thaw(vm_id, failure)

    def _thaw(self, vm_id: str, failure: Exception | None = None) -> None:
        """Thaw the VM's filesystems; on failure it is owed a thaw (the volume's next try
        thaws first) and HypervisorError says so, and names `failure` (a snapshot's)."""
        try:
            self.hypervisor.thaw_filesystems(vm_id)
        except Exception as e:
            with self._freeze_guard:
                self._thaw_owed.add(vm_id)
            after = f" (after a snapshot failed: {failure})" if failure is not None else ""
            raise HypervisorError(f"{e}{after}", retryable=True) from e
        with self._freeze_guard:
            self._thaw_owed.discard(vm_id)

    def _owes_thaw(self, vm_id: str) -> bool:
        with self._freeze_guard:
            return vm_id in self._thaw_owed

    def _converge_failed(self, vol_id: str) -> bool:
        return self.ledger.get("volume", vol_id, "converge") is not None

    def _info(self, vol_id: str) -> VolumeInfo:
        for v in self.storage.list_volumes():
            if v.id == vol_id:
                return v
        raise LookupError(f"volume {vol_id} vanished")

    def _size(self, vol_id: str) -> int:
        return self._info(vol_id).size_bytes

    def _plug(self, vm_id: str, wanted: dict[str, str], generation: int, *,
              attach: bool = True) -> bool:
        """Detach volumes no longer wanted (live and from the VM's definition), then,
        when `attach`, attach what is wanted and missing. Whether all of it is done: not
        when one failed, or failed before and waits for its retry (not tried now)."""
        ok = True
        plugged = self._volume_disks(vm_id)
        for target, (vol_id, _disk) in plugged.items():
            if wanted.get(target) == vol_id:
                continue
            if self.ledger.may_try("volume", vol_id, "detach", (vm_id, target)):
                ok &= self._guard(vol_id, "detach", (vm_id, target), generation,
                                  partial(self.hypervisor.detach_disk, vm_id, target))
            else:
                ok = False
        if not attach:
            return ok
        for target, vol_id in wanted.items():
            if target in plugged and plugged[target][0] == vol_id:
                continue
            if self.ledger.may_try("volume", vol_id, "attach", (vm_id, target)):
                ok &= self._guard(vol_id, "attach", (vm_id, target), generation,
                                  partial(self._attach, vm_id, vol_id, target))
            else:
                ok = False
        return ok

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
        for vm_id in own_vms:  # a stopped VM's volumes are in its definition
            for target, (vol_id, _d) in self._volume_disks(vm_id).items():
                plugged[vol_id] = (vm_id, target)
        result = []
        for dv in desired.volumes:
            info, failure = existing.get(dv.id), self._final_failure(dv.id)
            if info is None and failure is None:
                continue  # absent and fine: not made yet, or deleted
            where = plugged.get(dv.id)
            result.append(ObservedVolume(
                id=dv.id, size_bytes=info.size_bytes if info else 0,
                used_bytes=info.used_bytes if info else 0,
                snapshots=list(info.snapshots) if info else [],
                quiesced_snapshots=list(info.quiesced_snapshots) if info else [],
                rollback_seq=info.rollback_seq if info else 0,
                attached_to=where[0] if where else None, target=where[1] if where else None,
                error=failure.message if failure else None,
                failed_generation=failure.seq if failure else None,
            ))
        return result
