"""Converge the node to its desired state: remove before add, one lock per VM, revert on failure.

Level-triggered like a kubelet: every pass compares the whole desired state with
what the hypervisor reports, so a restarted agent adopts what exists and a
missed change is caught by the next pass. Nothing is removed until a desired
state has been received from the controller.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import shutil
import threading
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from agent import migration_disks
from agent.drivers.gpu.base import GpuDriver
from agent.drivers.gpu.none import NoGpuDriver
from agent.drivers.hypervisor.base import (
    DiskSpec,
    HostdevSpec,
    HypervisorDriver,
    HypervisorError,
    NicSpec,
    VmObservation,
    VmSpec,
)
from agent.drivers.network.base import bridge_name
from agent.drivers.storage.base import ImageInUse, StorageDriver
from agent.networks import Blocker, NetworkKeeper, tap_name
from agent.protocol import (
    DesiredPort,
    DesiredState,
    DesiredVm,
    MigrationReport,
    NodeFailure,
    ObservedVm,
    ObservedVmState,
    ObservedVolume,
    PowerMode,
    PowerState,
)
from agent.retry import Entry, FailureLedger
from agent.revert import Reverter
from agent.volumes import VolumeKeeper
from images.netconfig import network_config
from images.seed import build_nocloud_seed

log = logging.getLogger(__name__)

VGPU_FILE = "vgpus.json"  # in the VM's directory: the vGPUs made for it, to remove with it
OWNER_LABEL = "vauban.node"  # the node whose agent made the VM; no other agent touches it


Task = Callable[[], bool]  # True when it ended well; False when a failure was recorded


class _Pass:
    """Counts one pass's tasks (VMs, removals, flattens, volumes, image drops); reports its
    generation applied once all ended well and nothing of it was skipped (busy, waiting on
    a failure, or blocked by a network or the firewall)."""

    def __init__(self, generation: int, applied: Callable[[int], None]) -> None:
        self.generation = generation
        self._applied = applied
        self._lock = threading.Lock()
        self._outstanding = 0
        self._complete = True
        self._sealed = False

    def started(self) -> None:
        with self._lock:
            self._outstanding += 1

    def skipped(self) -> None:
        """Something of this generation is not done (busy, or failed): not applied."""
        with self._lock:
            self._complete = False

    def ended(self, ok: bool) -> None:
        """A task ended; `ok`: it did all it was asked (a recorded failure is not ok)."""
        with self._lock:
            self._outstanding -= 1
            self._complete &= ok
        self._maybe_applied()

    def seal(self) -> None:
        with self._lock:
            self._sealed = True
        self._maybe_applied()

    def _maybe_applied(self) -> None:
        with self._lock:
            fire = self._sealed and self._outstanding == 0 and self._complete
            self._complete &= not fire  # fire once
        if fire:
            self._applied(self.generation)


def attempt_key(vm: DesiredVm) -> tuple[object, ...]:
    """What a VM task tries to carry out: a change of any of it is tried afresh."""
    return (vm.power_seq, vm.power, vm.vcpus, vm.memory_mib, vm.root_disk_gib, vm.image.id)


class _Blocked(Exception):
    """A VM task found its network or firewall failed: the VM waits, it did not fail."""

    def __init__(self, blocker: Blocker) -> None:
        super().__init__(blocker.message)
        self.blocker = blocker


class Reconciler:
    """Owns the VMs of this node: applies desired states and reports what it observes."""

    def __init__(
        self,
        hypervisor: HypervisorDriver,
        storage: StorageDriver,
        image_source: Callable[[str], Iterator[bytes]],
        instances_dir: Path,
        owner: str,
        stop_grace_s: float,
        on_change: Callable[[], None] = lambda: None,
        on_settled: Callable[[], None] = lambda: None,
        prepare_disks: Callable[[], None] = lambda: None,
        networks: NetworkKeeper | None = None,
        workers: int = 4,
        gpu: GpuDriver | None = None,
        ledger: FailureLedger | None = None,
        start_refusal: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.hypervisor = hypervisor
        self.storage = storage
        self.image_source = image_source
        self.instances_dir = instances_dir
        self.owner = owner
        self.stop_grace_s = stop_grace_s
        self.on_change = on_change
        self.on_settled = on_settled
        self.prepare_disks = prepare_disks  # before a domain with storage disks is defined
        # one ledger of failures for VMs, images, volumes, networks and the firewall
        self.ledger = ledger if ledger is not None else FailureLedger()
        if networks is not None and networks.ledger is not self.ledger:
            raise ValueError("the network keeper must record its failures in the one ledger "
                             "of the reconciler: give both the same one")
        self.volumes = VolumeKeeper(storage, hypervisor, prepare_disks, self.ledger)
        self.networks = networks
        self.gpu = gpu or NoGpuDriver()
        # why no VM may start now (the node fenced itself: agent.fencing), or None
        self.start_refusal = start_refusal
        self._idle = threading.Condition()
        self._running_tasks = 0
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vm")
        self._guard = threading.Lock()
        self._vm_locks: dict[str, threading.Lock] = {}
        self._image_locks: dict[str, threading.Lock] = {}
        self._retired_gone: set[str] = set()  # deleted images known absent from storage
        self._flattened: set[str] = set()  # VMs whose root disk no longer depends on its image
        self._blocked: dict[str, Blocker] = {}  # VMs not created or started: what stops them
        self._migrations: dict[str, MigrationReport] = {}  # source: this node's moves out
        self._prepared: dict[str, int] = {}  # target: VMs ready to arrive, by migration seq
        self._aborted: set[str] = set()  # source: VMs whose called-off migration was aborted
        self.progress: dict[str, int] = {}
        self.applied_generation = -1
        self.desired: DesiredState | None = None

    # -- paths -------------------------------------------------------------
    def vm_dir(self, vm_id: str) -> Path:
        return self.instances_dir / vm_id

    def _bridge_of(self, port: DesiredPort) -> str:
        """What a NIC of `port` plugs into: the network's bridge on this node, or on an
        XCP-ng pool the pool network the region's network maps to (the placement refused
        a network without one)."""
        if self.hypervisor.info().name == "xapi":
            return port.xapi_network or bridge_name(port.network_id)
        return bridge_name(port.network_id)

    def console_log(self, vm_id: str) -> Path:
        return self.vm_dir(vm_id) / "console.log"

    # -- one pass ----------------------------------------------------------
    def apply(self, desired: DesiredState) -> None:
        """One pass; it returns once the removals are done and the rest is under way.

        Removals end before any addition starts (what they free is there for the new).
        Creates and power changes run in the background, one task per VM at a time, so
        a long image download never holds up other VMs. A VM still busy from an earlier
        pass is left to the next pass, which `on_settled` asks for when a task ends.
        `applied_generation` becomes this generation once every task of this pass ended
        well and nothing of it waits: never while an action of it failed (also one waiting
        for its retry or given up on), a network it needs failed or its security groups
        are not in force. A later pass of the same generation that finds it all done marks
        it applied then.
        """
        self.desired = desired
        observed = {o.id: o for o in self._own_vms()}
        wanted = {vm.id: vm for vm in desired.vms}
        unwanted = (observed.keys() - wanted.keys()) | set(
            self._orphan_dirs(observed.keys() | wanted.keys()))
        tracker = _Pass(desired.generation, self._mark_applied)
        self._abort_called_off(wanted)
        self._forget_stale(desired, wanted, unwanted, observed.keys())
        for i, o in observed.items():
            if o.persistent:  # arrived: the disk made for it is its own, never disposable
                migration_disks.arrived(self.vm_dir(i))
        removals = []
        for i in unwanted:
            if self.ledger.may_try("vm", i, "remove", None):
                removals.append(self._start(
                    i, functools.partial(self._remove, i, i in observed), tracker))
            else:
                tracker.skipped()  # its removal failed: waits for its retry
        for f in removals:
            if f is not None:
                f.result()
        if self.networks is not None:  # after VMs went (their taps), before new ones come
            ready = self.networks.apply(desired.networks)
            # rules first: a VM started below is filtered from its first packet
            if not (self.networks.apply_security_groups(desired) and ready):
                tracker.skipped()  # the failure is reported; this generation is not applied
            self.networks.serve_dhcp(desired)  # a port's answers are there before its VM
        for vm_id, vm in wanted.items():
            obs = observed.get(vm_id)
            if not self.ledger.may_try("vm", vm_id, "converge", attempt_key(vm)):
                self._blocked.pop(vm_id, None)  # its own failure is what it shows
                tracker.skipped()  # failed for this request: waits for its retry or a new one
            elif not self._needs_work(vm, obs):
                self._blocked.pop(vm_id, None)
            elif (blocker := self._blocker(vm, obs)) is not None:
                self._blocked[vm_id] = blocker  # the failure is its network's or firewall's
                tracker.skipped()
            else:
                self._start(vm_id, functools.partial(self._converge, vm, obs), tracker)
        work, volumes_wait = self.volumes.plan(desired, observed)
        if volumes_wait:
            tracker.skipped()  # a volume action failed: waits for its retry or a new request
        for key, task in work:
            self._start(key, task, tracker)
        for vm in desired.vms:
            if not vm.flatten_root or vm.id in self._flattened:
                continue
            if vm.id in observed and self.ledger.may_try("vm", vm.id, "flatten", True):
                self._start(vm.id, functools.partial(self._flatten, vm), tracker)
            else:  # not made yet (a later pass flattens it), or failed and waiting
                tracker.skipped()
        retired = [i for i in desired.retired_images if i not in self._retired_gone]
        due = [i for i in retired if self.ledger.may_try("image", i, "delete", None)]
        if len(due) < len(retired):
            tracker.skipped()  # a delete failed: waits for its retry
        if due:
            self._start("retired-images", functools.partial(self._drop_images, due), tracker)
        tracker.seal()
        self.on_change()

    def _abort_called_off(self, wanted: dict[str, DesiredVm]) -> None:
        """Abort, once, each migration under way from here that the controller called off:
        the VM is still wanted here, without that order. (A VM no longer wanted here at all
        has moved: its migration is never aborted.) A refusal (past the switchover) is
        logged; the move's own outcome is reported as ever."""
        for vm_id, report in list(self._migrations.items()):
            vm = wanted.get(vm_id)
            if report.state != "running" or vm is None or vm_id in self._aborted or \
                    (vm.migrate_to is not None and vm.migrate_to.seq == report.seq):
                continue
            self._aborted.add(vm_id)
            log.info("VM %s: migration %d called off; aborting it", vm_id, report.seq)
            try:
                self.hypervisor.abort_migration(vm_id)
            except Exception as e:  # its migrate call reports how it ended
                log.warning("VM %s: %s", vm_id, e)

    def _forget_stale(self, desired: DesiredState, wanted: dict[str, DesiredVm],
                      unwanted: set[str], here: Collection[str]) -> None:
        """Forget the failures of actions that no longer apply, so that the node reports
        only what still stands: of a VM not wanted, all but its failed removal (it is still
        here); of a VM wanted, its removal and a flatten no longer asked; of an image,
        its delete once no longer to be dropped, and its import once no VM to be made here
        needs it or it was deleted (a removal forgets its VM itself, a drop its image)."""
        for e in self.ledger.of_kind("vm"):
            vm = wanted.get(e.object_id)
            if vm is None:
                stale = e.object_id not in unwanted or e.action != "remove"
            else:
                stale = e.action == "remove" or (e.action == "flatten" and not vm.flatten_root)
            if stale:
                self.ledger.succeeded("vm", e.object_id, e.action)
        for vm_id in self._blocked.keys() - wanted.keys():
            self._blocked.pop(vm_id, None)
        for vm_id, report in list(self._migrations.items()):
            vm = wanted.get(vm_id)
            if vm is None or vm.migrate_to is None or vm.migrate_to.seq != report.seq:
                self._migrations.pop(vm_id, None)
        for vm_id, seq in list(self._prepared.items()):
            vm = wanted.get(vm_id)
            if vm is None or vm.incoming_from is None or vm.incoming_from.seq != seq:
                self._prepared.pop(vm_id, None)
        retired = set(desired.retired_images)
        needed = {vm.image.id for vm in wanted.values() if vm.id not in here} - retired
        for e in self.ledger.of_kind("image"):
            if ((e.action == "delete" and e.object_id not in retired)
                    or (e.action == "import" and e.object_id not in needed)):
                self.ledger.succeeded("image", e.object_id, e.action)

    def _mark_applied(self, generation: int) -> None:
        with self._guard:
            self.applied_generation = max(self.applied_generation, generation)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no VM task runs; False if `timeout` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._running_tasks == 0, timeout)

    def _own_vms(self) -> list[VmObservation]:
        """This node's VMs: a shared hypervisor may also run other nodes' or regions' VMs."""
        return [o for o in self.hypervisor.list_vms() if o.labels.get(OWNER_LABEL) == self.owner]

    def _start(self, vm_id: str, work: Task, tracker: _Pass) -> Future[None] | None:
        """Run `work` under the VM's lock in the pool; None if the VM is busy already.
        The pass counts it done well only when it returns True (not when it raises)."""
        with self._guard:
            lock = self._vm_locks.setdefault(vm_id, threading.Lock())
        if not lock.acquire(blocking=False):
            tracker.skipped()  # busy with an earlier request; a later pass looks again
            return None
        tracker.started()
        with self._idle:
            self._running_tasks += 1

        def run() -> None:
            ok = False
            try:
                ok = work()
            except Exception:
                log.exception("work on VM %s failed; a later pass retries", vm_id)
            finally:
                lock.release()
                tracker.ended(ok)
                with self._idle:
                    self._running_tasks -= 1
                    self._idle.notify_all()
                self.on_settled()
                self.on_change()

        return self.pool.submit(run)

    def _needs_work(self, vm: DesiredVm, obs: VmObservation | None) -> bool:
        """Whether the VM is not yet as asked (a request failed for is checked before).
        A VM arriving here by migration is only prepared for, never made or started (one
        moved cold is turned off once it arrived paused); one leaving is moved once per
        migration, and never made again once gone."""
        if vm.incoming_from is not None:
            if vm.incoming_from.cold and obs is not None and obs.persistent and obs.running:
                return True
            return obs is None and self._prepared.get(vm.id) != vm.incoming_from.seq
        if vm.migrate_to is not None:
            report = self._migrations.get(vm.id)
            done = report is not None and report.seq == vm.migrate_to.seq \
                and report.state in ("completed", "failed")
            return obs is not None and (obs.running or vm.migrate_to.cold) and not done
        if obs is None:
            return True
        if vm.power is PowerState.RUNNING:
            # only a new power action starts it: a VM its guest powered off stays off
            return obs.power_seq != vm.power_seq
        return obs.running or obs.power_seq != vm.power_seq

    def _orphan_dirs(self, known: set[str]) -> list[str]:
        """Instance directories left by a crash mid-create: ours, but no VM and not wanted."""
        if not self.instances_dir.is_dir():
            return []
        return [p.name for p in self.instances_dir.iterdir() if p.is_dir() and p.name not in known]

    # -- actions -----------------------------------------------------------
    def _converge(self, vm: DesiredVm, obs: VmObservation | None) -> bool:
        """Create the VM or apply its power request; whether it is now as asked (a failure
        goes to the ledger, a blocker to `_blocked`: neither is raised)."""
        try:
            if vm.incoming_from is not None and obs is not None:
                self._turn_off_arrival(vm)
            elif vm.incoming_from is not None:
                self._prepare_incoming(vm)
            elif vm.migrate_to is not None:
                return self._migrate(vm)
            elif obs is None:
                self._create(vm)
            else:
                self._set_power(vm, obs)
        except _Blocked as e:  # waits for its network or firewall; not the VM's failure
            self._blocked[vm.id] = e.blocker
            return False
        except Exception as e:  # every failure is reported on the VM; the agent goes on
            log.warning("VM %s (%s): %s", vm.name, vm.id, e)
            self._blocked.pop(vm.id, None)  # its own failure is what it shows now
            self.ledger.failed("vm", vm.id, "converge", attempt_key(vm), e, seq=vm.power_seq)
            return False
        else:
            self._blocked.pop(vm.id, None)
            self.ledger.succeeded("vm", vm.id, "converge")
            return True
        finally:
            self.progress.pop(vm.id, None)

    def _blocker(self, vm: DesiredVm, obs: VmObservation | None = None) -> Blocker | None:
        """What keeps the VM from being created or started here: the node fenced itself,
        a failed network of its ports, or its security groups not in force (fail closed).
        Stopping it never waits."""
        if obs is not None and (vm.power is not PowerState.RUNNING or obs.running):
            return None  # neither created nor started by this request
        if (refusal := self.start_refusal()) is not None:
            return Blocker(refusal, final=False)
        if self.networks is None or not vm.ports:
            return None
        names = {n.id: n.name for n in self.desired.networks} if self.desired else {}
        return self.networks.vm_blocker(vm.ports, names)

    def _check_ports(self, vm: DesiredVm) -> None:
        """Raise _Blocked (before anything is made) if the VM may not be created or
        started yet; checked again in the task, as a blocker may arise meanwhile."""
        blocker = self._blocker(vm)
        if blocker is not None:
            raise _Blocked(blocker)

    def _create(self, vm: DesiredVm) -> None:
        """Image, disk, seed, domain, start: each undone if a later step fails (a root
        disk taken over from another node is never deleted)."""
        self._check_ports(vm)
        self._step(vm.id, 10)
        if not vm.adopt_disk:
            self._ensure_image(vm)
        self._step(vm.id, 60)
        with Reverter() as revert:
            if vm.adopt_disk:
                root = self.storage.existing_root_disk(vm.id)
            else:
                root = self.storage.create_root_disk(vm.id, vm.image.id, vm.root_disk_gib)
                revert.add(lambda: self.storage.delete_vm_disks(vm.id), "delete disks")
            vm_dir = self.vm_dir(vm.id)
            vm_dir.mkdir(parents=True, exist_ok=True)
            revert.add(lambda: shutil.rmtree(vm_dir, ignore_errors=True), "remove vm dir")
            vm_dir.chmod(0o755)
            seed = vm_dir / "seed.iso"
            build_nocloud_seed(vm.seed, seed,
                               network_config=network_config(vm.ports) if vm.ports else None)
            self._step(vm.id, 70)
            hostdevs = self._claim_gpus(vm, revert)
            scsi = vm.machine.disk_bus == "virtio-scsi"
            if scsi:  # the root and the seed on the virtio-scsi controller
                root = dataclasses.replace(root, target="sda", bus="scsi")
            seed_disk = DiskSpec(source=seed, format="raw", target="sdb" if scsi else "vdb",
                                 readonly=True, bus="scsi" if scsi else "virtio")
            spec = VmSpec(
                id=vm.id, name=f"vauban-{vm.name}", vcpus=vm.vcpus, memory_mib=vm.memory_mib,
                disks=(root, seed_disk), firmware=vm.machine.firmware,
                secure_boot=vm.machine.secure_boot, machine=vm.machine.machine,
                console_log=self.console_log(vm.id), power_seq=0,
                labels={OWNER_LABEL: self.owner},
                nics=tuple(NicSpec(mac=p.mac, bridge=self._bridge_of(p), mtu=p.mtu,
                                   device=tap_name(p.id)) for p in vm.ports),
                hostdevs=hostdevs,
            )
            self.prepare_disks()
            self.hypervisor.define(spec)
            revert.add(lambda: self.hypervisor.undefine(vm.id), "undefine")
            self._step(vm.id, 80)
            if vm.power is PowerState.RUNNING:
                self.hypervisor.start(vm.id)
            self.hypervisor.set_power_seq(vm.id, vm.power_seq)
            revert.success()
        self._unless_fenced_meanwhile(vm)  # after success: a fence never deletes a disk
        log.info("VM %s (%s) created", vm.name, vm.id)

    def _prepare_incoming(self, vm: DesiredVm) -> None:
        """Make ready what the arriving VM's definition points at on this node: its
        directory (console log) and seed, and the storage secret; with its disks copied,
        its image and a root disk made for the copy (see agent.migration_disks). Its
        ports' firewall rules and networks come with every pass (the controller lists its
        ports here); a blocked network or firewall keeps it unprepared, so the move does
        not start."""
        assert vm.incoming_from is not None
        self._check_ports(vm)
        self._vm_files(vm, rebuild=True)
        if vm.incoming_from.copy_disks:
            self._ensure_image(vm)
            migration_disks.prepare(self.storage, vm, self.vm_dir(vm.id))
        self.prepare_disks()
        self._prepared[vm.id] = vm.incoming_from.seq
        log.info("VM %s (%s) ready to arrive from node %s", vm.name, vm.id,
                 vm.incoming_from.source_node_id)

    def _turn_off_arrival(self, vm: DesiredVm) -> None:
        """A VM moved cold arrived paused, its guest never run: off at once (still
        defined), as it was on its old node; its report then completes the move."""
        self.hypervisor.stop(vm.id, grace_seconds=0)
        log.info("VM %s (%s) arrived stopped from node %s", vm.name, vm.id,
                 vm.incoming_from.source_node_id if vm.incoming_from else "?")

    def _vm_files(self, vm: DesiredVm, rebuild: bool) -> None:
        """The VM's folder (its console log goes there) and its seed, made again when
        `rebuild` or when missing (a create half undone: its domain outlived the revert)."""
        vm_dir = self.vm_dir(vm.id)
        seed = vm_dir / "seed.iso"
        if seed.exists() and not rebuild:
            return
        vm_dir.mkdir(parents=True, exist_ok=True)
        vm_dir.chmod(0o755)
        build_nocloud_seed(vm.seed, seed,
                           network_config=network_config(vm.ports) if vm.ports else None)

    def _migrate(self, vm: DesiredVm) -> bool:
        """Move the VM to the node its order names, once per order: the outcome is
        reported on the VM (`migration`), never as the VM's own failure. True."""
        order = vm.migrate_to
        assert order is not None
        self._migrations[vm.id] = MigrationReport(seq=order.seq, state="running")

        def progress(percent: int) -> None:
            self._migrations[vm.id] = MigrationReport(seq=order.seq, state="running",
                                                      progress=percent)
            self.on_change()

        log.info("VM %s (%s): migrating to node %s at %s%s", vm.name, vm.id,
                 order.target_node_id, order.target_address, " (cold)" if order.cold else "")
        try:
            if order.cold:
                self._ready_to_start_paused(vm)
            self.hypervisor.migrate(vm.id, order, {OWNER_LABEL: order.target_node_id},
                                    progress)
        except Exception as e:
            if vm.id not in {o.id for o in self._own_vms()}:
                # gone from here all the same: the target's report says where it runs
                log.warning("VM %s: migration reported %s, but it left this node", vm.id, e)
                self._migrations[vm.id] = MigrationReport(seq=order.seq, state="completed",
                                                          progress=100)
                return True
            log.warning("VM %s (%s): migration failed: %s", vm.name, vm.id, e)
            called_off = vm.id in self._aborted
            self._migrations[vm.id] = MigrationReport(
                seq=order.seq, state="failed",
                error=f"called off: {e}" if called_off else str(e))
            return True
        finally:
            self._aborted.discard(vm.id)
        if order.copy_disks:  # it runs there on its copy: this one goes with the VM's files
            migration_disks.left(self.vm_dir(vm.id))
        self._migrations[vm.id] = MigrationReport(seq=order.seq, state="completed",
                                                  progress=100)
        log.info("VM %s (%s) migrated to node %s", vm.name, vm.id, order.target_node_id)
        return True

    def _ready_to_start_paused(self, vm: DesiredVm) -> None:
        """What a stopped VM needs here to be started paused for its cold move: its files
        and disk secrets; raises if the node may not start it (fenced) or its network or
        firewall is not in force (the move then fails with that reason)."""
        if (blocker := self._blocker(vm)) is not None:
            raise HypervisorError(f"cannot start it paused for its move: {blocker.message}; "
                                  "it stays stopped here", retryable=False)
        self._vm_files(vm, rebuild=False)
        self.prepare_disks()

    def _claim_gpus(self, vm: DesiredVm, revert: Reverter) -> tuple[HostdevSpec, ...]:
        """Bind the VM's GPU groups to vfio-pci and make its vGPUs; the hostdevs they give.

        The vGPU list is written to the VM's directory first, so a removal finds
        them even after the controller has forgotten the VM.
        """
        devs: list[HostdevSpec] = []
        if vm.vgpus:
            (self.vm_dir(vm.id) / VGPU_FILE).write_text(
                json.dumps([v.uuid for v in vm.vgpus]))
        for address in vm.gpus:
            bound = self.gpu.attach_group(vm.id, address)
            revert.add(functools.partial(self.gpu.release_group, address), f"GPU {address}")
            devs += [HostdevSpec("pci", a) for a in bound]
        for vgpu in vm.vgpus:
            self.gpu.create_vgpu(vgpu)
            revert.add(functools.partial(self.gpu.remove_vgpu, vgpu.uuid), f"vGPU {vgpu.uuid}")
            devs.append(HostdevSpec("mdev", vgpu.uuid))
        return tuple(devs)

    def _release_gpus(self, vm_id: str) -> None:
        """Give back the GPU groups held for the VM and remove its vGPUs (after its domain)."""
        for address, owner in self.gpu.held().items():
            if owner == vm_id:
                self.gpu.release_group(address)
        try:
            uuids = json.loads((self.vm_dir(vm_id) / VGPU_FILE).read_text())
        except FileNotFoundError:
            uuids = []
        for uuid in uuids:
            self.gpu.remove_vgpu(uuid)

    def _ensure_image(self, vm: DesiredVm) -> None:
        with self._guard:
            lock = self._image_locks.setdefault(vm.image.id, threading.Lock())
        with lock:  # two VMs of one new image download it once
            if self.storage.has_image(vm.image.id):  # also made by another node meanwhile
                self.ledger.succeeded("image", vm.image.id, "import")
                return
            try:
                self.storage.import_image(vm.image, self.image_source(vm.image.id))
            except Exception as e:  # the image's own failure, beside that of its VMs
                self.ledger.failed("image", vm.image.id, "import", vm.image.sha256, e)
                raise
            self.ledger.succeeded("image", vm.image.id, "import")

    def _set_power(self, vm: DesiredVm, obs: VmObservation) -> None:
        """Carry out the VM's latest power action (power_seq) by its power_mode, then record
        it applied in the VM's metadata. A reboot is an ACPI shutdown (forced after the
        grace period) and a start, so it works whatever the guest and QEMU make of an ACPI
        reboot; a reset is the reset button. One done but not yet recorded (the agent died
        in between) is done again: at least once, never lost."""
        running = obs.running
        if vm.power is PowerState.RUNNING and running and vm.power_mode is PowerMode.RESET:
            self.hypervisor.reset(vm.id)
        elif vm.power is PowerState.RUNNING and running and vm.power_mode is PowerMode.REBOOT:
            self._check_ports(vm)  # before it goes down: a VM that may not start stays up
            self.hypervisor.stop(vm.id, grace_seconds=self.stop_grace_s)
            running = False
        if vm.power is PowerState.RUNNING and not running:
            self._check_ports(vm)
            self._vm_files(vm, rebuild=False)  # what the domain points at, there again
            self.prepare_disks()  # an RBD disk needs the Ceph secret, gone if libvirtd restarted
            with Reverter() as revert:  # a host reboot loses vGPUs and vfio bindings
                self._claim_gpus(vm, revert)
                revert.success()
            self.hypervisor.start(vm.id)
            self._unless_fenced_meanwhile(vm)
        elif vm.power is PowerState.STOPPED and running:
            grace = 0.0 if vm.power_mode is PowerMode.FORCE else self.stop_grace_s
            self.hypervisor.stop(vm.id, grace_seconds=grace)
        self.hypervisor.set_power_seq(vm.id, vm.power_seq)

    def _unless_fenced_meanwhile(self, vm: DesiredVm) -> None:
        """A start checked before the node fenced itself may end after the fence destroyed
        the node's domains: destroy this one too (kept defined, disks untouched) and raise
        _Blocked. (The fence refuses starts before it lists the domains, so every domain
        started is destroyed by one of the two.)"""
        refusal = self.start_refusal()
        if refusal is None:
            return
        self.hypervisor.stop(vm.id, grace_seconds=0)
        # its request counts as carried out, as for the VMs the fence destroyed: none of
        # them starts again by itself once the fence is cleared
        self.hypervisor.set_power_seq(vm.id, vm.power_seq)
        raise _Blocked(Blocker(refusal, final=False))

    def destroy_own_vms(self) -> list[str]:
        """Force off every running domain of this node at once (the fence): no shutdown,
        no undefine, no disk touched. Returns the ids destroyed; after trying them all,
        raises the first failure."""
        destroyed, failures = [], []
        for o in self._own_vms():
            if not o.running:
                continue
            try:
                self.hypervisor.stop(o.id, grace_seconds=0)
            except Exception as e:
                log.error("fence: VM %s could not be destroyed: %s", o.id, e)
                failures.append(e)
            else:
                destroyed.append(o.id)
        if failures:
            raise failures[0]
        return destroyed

    def _flatten(self, vm: DesiredVm) -> bool:
        """Copy the image into the VM's root disk (storage that can, e.g. Ceph, does it live);
        whether it is done (a failure is shown on the VM and retried by the ledger's policy)."""
        try:
            if self.storage.root_disk_is_clone(vm.id):
                self.storage.flatten_root_disk(vm.id)
        except Exception as e:
            log.warning("VM %s: flatten failed: %s", vm.name, e)
            self.ledger.failed("vm", vm.id, "flatten", True, e)
            return False
        self._flattened.add(vm.id)
        self.ledger.succeeded("vm", vm.id, "flatten")
        return True

    def _drop_images(self, image_ids: list[str]) -> bool:
        """Remove stored copies of deleted images. One still backing a disk is kept, no
        failure, and tried again next pass; any other failure is reported and retried
        by the ledger's policy. Whether none failed."""
        ok = True
        for image_id in image_ids:
            try:
                self.storage.delete_image(image_id)
            except ImageInUse as e:  # kept until no disk is made from it
                log.debug("deleted image %s kept for now: %s", image_id, e)
                self.ledger.succeeded("image", image_id, "delete")
            except Exception as e:
                log.warning("deleted image %s not removed: %s", image_id, e)
                self.ledger.failed("image", image_id, "delete", None, e)
                ok = False
            else:
                self._retired_gone.add(image_id)
                self.ledger.forget("image", image_id)
        return ok

    def _remove(self, vm_id: str, defined: bool = True) -> bool:
        """Domain and files of a VM no longer wanted here, and its disks only when the
        controller lists it as deleted: any other may run on another node now (moved
        there, or restarted there after this node was fenced), from these very disks.
        The one exception: a local disk made here for a move that never arrived, or
        left by a move that copied it away, of a VM not `defined` here (see
        agent.migration_disks). Each step is idempotent. True once removed.

        A failure is reported (kind vm, action remove) and raised; it is tried again
        when the ledger's policy says.
        """
        deleted = self.desired is not None and vm_id in self.desired.delete_vm_disks
        deleted |= not defined and migration_disks.disposable(self.vm_dir(vm_id))
        try:
            self.hypervisor.undefine(vm_id)
            self._release_gpus(vm_id)
            if deleted:
                self.storage.delete_vm_disks(vm_id)
        except Exception as e:
            self.ledger.failed("vm", vm_id, "remove", None, e)
            raise
        shutil.rmtree(self.vm_dir(vm_id), ignore_errors=True)
        self.ledger.forget("vm", vm_id)
        self._flattened.discard(vm_id)
        log.info("VM %s removed%s", vm_id, "" if deleted else " (its disks kept)")
        return True

    def _step(self, vm_id: str, percent: int) -> None:
        self.progress[vm_id] = percent
        self.on_change()

    # -- report ------------------------------------------------------------
    def observe_volumes(self) -> list[ObservedVolume]:
        own = {o.id: o for o in self._own_vms()}
        return self.volumes.observe(self.desired, own)

    def awaiting_arrival(self) -> bool:
        """Whether a VM prepared for is to arrive here by migration."""
        return bool(self._prepared)

    def arrivals(self) -> frozenset[str]:
        """The VMs prepared for that now run here, defined, or arrived paused to be turned
        off (moved cold): arrived (their report decides the move, so it is not to wait
        for the next report interval, nor a cold one's turning off for the next pass)."""
        prepared = frozenset(self._prepared)  # copied at once: tasks change it meanwhile
        if not prepared:
            return frozenset()
        cold = {vm.id for vm in (self.desired.vms if self.desired else [])
                if vm.incoming_from is not None and vm.incoming_from.cold}
        return frozenset(o.id for o in self._own_vms()
                         if o.id in prepared and o.persistent and (o.running or o.id in cold))

    def observe(self) -> list[ObservedVm]:
        """Every VM of this node as the hypervisor shows it, plus those being built or failed."""
        result: dict[str, ObservedVm] = {}
        for o in self._own_vms():
            state = ObservedVmState.RUNNING if o.running else ObservedVmState.STOPPED
            result[o.id] = ObservedVm(
                id=o.id, name=o.name, state=state if o.persistent else ObservedVmState.INCOMING,
                power_seq=o.power_seq,
                console_log=str(o.console_log) if o.console_log else None, guest=o.guest,
                hypervisor_uuid=o.hypervisor_uuid,
            )
        for vm in self.desired.vms if self.desired else []:
            if vm.incoming_from is not None or vm.migrate_to is not None:
                result.update(self._migration_view(vm, result.get(vm.id)))
                continue
            if vm.flatten_root and vm.id in result:
                flatten = self.ledger.get("vm", vm.id, "flatten")
                result[vm.id] = result[vm.id].model_copy(update={
                    "root_cloned": vm.id not in self._flattened,
                    "error": flatten.message if flatten else None})
            if vm.id in self.progress:
                result[vm.id] = ObservedVm(
                    id=vm.id, name=vm.name, state=ObservedVmState.PROVISIONING,
                    power_seq=result[vm.id].power_seq if vm.id in result else 0,
                    progress=self.progress[vm.id],
                )
            elif (blocker := self._blocked.get(vm.id)) is not None:
                result[vm.id] = self._blocked_view(vm, blocker, result.get(vm.id))
            elif (failure := self.ledger.get("vm", vm.id, "converge")) is not None:
                result[vm.id] = self._failed_view(vm, failure, result.get(vm.id))
        return list(result.values())

    def _migration_view(self, vm: DesiredVm, seen: ObservedVm | None) -> dict[str, ObservedVm]:
        """A VM on the move, as this node sees it: on the target, incoming (prepared:
        `ready`) until it runs here defined (`completed`, with the guest's pause), or moved
        cold, until it is defined here and turned off; on the source, as it runs, with how
        its move stands. Empty when there is nothing to say."""
        if vm.incoming_from is not None:
            seq = vm.incoming_from.seq
            cold = vm.incoming_from.cold
            if seen is not None and seen.state is not ObservedVmState.INCOMING and \
                    not (cold and seen.state is ObservedVmState.RUNNING):
                arrived = MigrationReport(
                    seq=seq, state="completed", progress=100,
                    downtime_ms=self.hypervisor.migration_downtime_ms(vm.id))
                return {vm.id: seen.model_copy(update={"migration": arrived})}
            failure = self.ledger.get("vm", vm.id, "converge")
            blocker = self._blocked.get(vm.id)
            why = blocker.message if blocker else failure.message if failure else None
            ready = self._prepared.get(vm.id) == seq
            return {vm.id: ObservedVm(
                id=vm.id, name=vm.name, state=ObservedVmState.INCOMING,
                power_seq=seen.power_seq if seen else 0, error=why,
                migration=MigrationReport(seq=seq, state="ready") if ready else None)}
        report = self._migrations.get(vm.id)
        if seen is None:
            return {}
        return {vm.id: seen.model_copy(update={"migration": report})}

    @staticmethod
    def _blocked_view(vm: DesiredVm, blocker: Blocker, prior: ObservedVm | None) -> ObservedVm:
        """A VM waiting for its network or firewall: as it is, with the cause; in error
        for its power action once that failure is given up on (it still starts once the
        failure clears)."""
        state = prior.state if prior else ObservedVmState.PROVISIONING
        return ObservedVm(
            id=vm.id, name=vm.name, state=ObservedVmState.ERROR if blocker.final else state,
            power_seq=prior.power_seq if prior else 0,
            error=f"{'not started' if blocker.final else 'waiting'}: {blocker.message}",
            failed_power_seq=vm.power_seq if blocker.final else None,
            console_log=prior.console_log if prior else None,
        )

    @staticmethod
    def _failed_view(vm: DesiredVm, failure: Entry, prior: ObservedVm | None) -> ObservedVm:
        """A VM whose last task failed: in error once final, else as it is, retrying."""
        if failure.final:
            state = ObservedVmState.ERROR
            failed = failure.seq
        else:  # still trying: the request stands, the error is shown meanwhile
            state = prior.state if prior else ObservedVmState.PROVISIONING
            failed = None
        return ObservedVm(
            id=vm.id, name=vm.name, state=state, power_seq=prior.power_seq if prior else 0,
            error=failure.message if failure.final else f"retrying: {failure.message}",
            failed_power_seq=failed, console_log=prior.console_log if prior else None,
        )

    def report_failures(self) -> list[NodeFailure]:
        """Every failed action of this agent, for the node's status."""
        return self.ledger.report()
