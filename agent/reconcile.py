"""Converge the node to its desired state: remove before add, one lock per VM, revert on failure.

Level-triggered like a kubelet: every pass compares the whole desired state with
what the hypervisor reports, so a restarted agent adopts what exists and a
missed change is caught by the next pass. Nothing is removed until a desired
state has been received from the controller.
"""

from __future__ import annotations

import functools
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from agent.drivers.hypervisor.base import DiskSpec, HypervisorDriver, VmObservation, VmSpec
from agent.drivers.storage.base import StorageDriver
from agent.protocol import DesiredState, DesiredVm, ObservedVm, ObservedVmState, PowerState
from agent.revert import Reverter
from images.seed import build_nocloud_seed

log = logging.getLogger(__name__)

RETRY_AFTER_S = 30.0
OWNER_LABEL = "vauban.node"  # the node whose agent made the VM; no other agent touches it


@dataclass(frozen=True)
class Failure:
    key: tuple[object, ...]  # what was attempted; a changed request is tried afresh
    message: str
    retryable: bool
    at: float


def attempt_key(vm: DesiredVm) -> tuple[object, ...]:
    return (vm.power_seq, vm.power, vm.vcpus, vm.memory_mib, vm.root_disk_gib, vm.image.id)


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
        workers: int = 4,
    ) -> None:
        self.hypervisor = hypervisor
        self.storage = storage
        self.image_source = image_source
        self.instances_dir = instances_dir
        self.owner = owner
        self.stop_grace_s = stop_grace_s
        self.on_change = on_change
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vm")
        self._guard = threading.Lock()
        self._vm_locks: dict[str, threading.Lock] = {}
        self._image_locks: dict[str, threading.Lock] = {}
        self.failures: dict[str, Failure] = {}
        self.progress: dict[str, int] = {}
        self.applied_generation = -1
        self.desired: DesiredState | None = None

    # -- paths -------------------------------------------------------------
    def vm_dir(self, vm_id: str) -> Path:
        return self.instances_dir / vm_id

    def console_log(self, vm_id: str) -> Path:
        return self.vm_dir(vm_id) / "console.log"

    # -- one pass ----------------------------------------------------------
    def apply(self, desired: DesiredState) -> None:
        """One full pass. Afterwards every VM that was not busy matches `desired` or has
        a recorded failure; `applied_generation` advances only if none was skipped."""
        self.desired = desired
        observed = {o.id: o for o in self._own_vms()}
        wanted = {vm.id: vm for vm in desired.vms}
        unwanted = (observed.keys() - wanted.keys()) | set(
            self._orphan_dirs(observed.keys() | wanted.keys()))
        removals = [self._submit(i, functools.partial(self._remove, i)) for i in unwanted]
        # every removal ends before any addition starts: what they free is there for the new
        done = [f.result() for f in removals]
        additions: list[Future[bool]] = []
        for vm_id, vm in wanted.items():
            obs = observed.get(vm_id)
            if self._needs_work(vm, obs):
                additions.append(self._submit(vm_id, functools.partial(self._converge, vm, obs)))
        done += [f.result() for f in additions]
        if all(done):
            self.applied_generation = desired.generation
        self.on_change()

    def _own_vms(self) -> list[VmObservation]:
        """This node's VMs: a shared hypervisor may also run other nodes' or regions' VMs."""
        return [o for o in self.hypervisor.list_vms() if o.labels.get(OWNER_LABEL) == self.owner]

    def _submit(self, vm_id: str, work: Callable[[], None]) -> Future[bool]:
        with self._guard:
            lock = self._vm_locks.setdefault(vm_id, threading.Lock())

        def run() -> bool:
            if not lock.acquire(blocking=False):
                return False  # busy with an earlier request; the next pass looks again
            try:
                work()
                return True
            except Exception:
                log.exception("work on VM %s failed; the next pass retries", vm_id)
                return False
            finally:
                lock.release()

        return self.pool.submit(run)

    def _needs_work(self, vm: DesiredVm, obs: VmObservation | None) -> bool:
        failure = self.failures.get(vm.id)
        if failure and failure.key == attempt_key(vm):
            if not failure.retryable or time.monotonic() - failure.at < RETRY_AFTER_S:
                return False
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
    def _converge(self, vm: DesiredVm, obs: VmObservation | None) -> None:
        try:
            if obs is None:
                self._create(vm)
            else:
                self._set_power(vm, obs)
        except Exception as e:  # every failure is reported on the VM; the agent goes on
            retryable = bool(getattr(e, "retryable", False))
            log.warning("VM %s (%s): %s", vm.name, vm.id, e)
            self.failures[vm.id] = Failure(attempt_key(vm), str(e), retryable, time.monotonic())
        else:
            self.failures.pop(vm.id, None)
        finally:
            self.progress.pop(vm.id, None)
            self.on_change()

    def _create(self, vm: DesiredVm) -> None:
        """Image, disk, seed, domain, start: each undone if a later step fails."""
        self._step(vm.id, 10)
        self._ensure_image(vm)
        self._step(vm.id, 60)
        with Reverter() as revert:
            root = self.storage.create_root_disk(vm.id, vm.image.id, vm.root_disk_gib)
            revert.add(lambda: self.storage.delete_vm_disks(vm.id), "delete disks")
            vm_dir = self.vm_dir(vm.id)
            vm_dir.mkdir(parents=True, exist_ok=True)
            revert.add(lambda: shutil.rmtree(vm_dir, ignore_errors=True), "remove vm dir")
            vm_dir.chmod(0o755)
            seed = vm_dir / "seed.iso"
            build_nocloud_seed(vm.seed, seed)
            self._step(vm.id, 70)
            spec = VmSpec(
                id=vm.id, name=f"vauban-{vm.name}", vcpus=vm.vcpus, memory_mib=vm.memory_mib,
                disks=(root, DiskSpec(path=seed, format="raw", target="vdb", readonly=True)),
                console_log=self.console_log(vm.id), power_seq=0,
                labels={OWNER_LABEL: self.owner},
            )
            self.hypervisor.define(spec)
            revert.add(lambda: self.hypervisor.undefine(vm.id), "undefine")
            self._step(vm.id, 80)
            if vm.power is PowerState.RUNNING:
                self.hypervisor.start(vm.id)
            self.hypervisor.set_power_seq(vm.id, vm.power_seq)
            revert.success()
        log.info("VM %s (%s) created", vm.name, vm.id)

    def _ensure_image(self, vm: DesiredVm) -> None:
        with self._guard:
            lock = self._image_locks.setdefault(vm.image.id, threading.Lock())
        with lock:  # two VMs of one new image download it once
            if not self.storage.has_image(vm.image.id):
                self.storage.import_image(vm.image, self.image_source(vm.image.id))

    def _set_power(self, vm: DesiredVm, obs: VmObservation) -> None:
        if vm.power is PowerState.RUNNING and not obs.running:
            self.hypervisor.start(vm.id)
        elif vm.power is PowerState.STOPPED and obs.running:
            self.hypervisor.stop(vm.id, grace_seconds=self.stop_grace_s)
        self.hypervisor.set_power_seq(vm.id, vm.power_seq)

    def _remove(self, vm_id: str) -> None:
        """Domain, disks and files of a VM no longer wanted; each step is idempotent."""
        self.hypervisor.undefine(vm_id)
        self.storage.delete_vm_disks(vm_id)
        shutil.rmtree(self.vm_dir(vm_id), ignore_errors=True)
        self.failures.pop(vm_id, None)
        log.info("VM %s removed", vm_id)

    def _step(self, vm_id: str, percent: int) -> None:
        self.progress[vm_id] = percent
        self.on_change()

    # -- report ------------------------------------------------------------
    def observe(self) -> list[ObservedVm]:
        """Every VM of this node as the hypervisor shows it, plus those being built or failed."""
        result: dict[str, ObservedVm] = {}
        for o in self._own_vms():
            state = ObservedVmState.RUNNING if o.running else ObservedVmState.STOPPED
            result[o.id] = ObservedVm(
                id=o.id, name=o.name, state=state, power_seq=o.power_seq,
                console_log=str(o.console_log) if o.console_log else None,
            )
        for vm in self.desired.vms if self.desired else []:
            failure = self.failures.get(vm.id)
            if vm.id in self.progress:
                result[vm.id] = ObservedVm(
                    id=vm.id, name=vm.name, state=ObservedVmState.PROVISIONING,
                    power_seq=result[vm.id].power_seq if vm.id in result else 0,
                    progress=self.progress[vm.id],
                )
            elif failure is not None:
                prior = result.get(vm.id)
                result[vm.id] = ObservedVm(
                    id=vm.id, name=vm.name, state=ObservedVmState.ERROR,
                    power_seq=prior.power_seq if prior else 0, error=failure.message,
                    console_log=prior.console_log if prior else None,
                )
        return list(result.values())
