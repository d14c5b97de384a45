"""The `--write` steps of `vauban xcpng check`: a tiny VM made, booted, stopped and
destroyed the way the pool agent does it (its XapiHypervisor, on PoolOps and an event
loop of its own session), each step timed.

A 1 MiB VDI on the pool's default SR, tagged as the VM's own, is its only disk (no
image import). Each step registers its undo as soon as it succeeded; on a failure the
undo steps run, and whatever is still in the pool afterwards is named.
"""

from __future__ import annotations

import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.drivers.hypervisor.base import DiskSpec, HypervisorError, VdiSource, VmSpec
from agent.drivers.hypervisor.xapi import XapiHypervisor
from agent.drivers.xapi.errors import XapiError
from agent.drivers.xapi.events import EventLoop, PoolCache
from agent.drivers.xapi.keys import INSTANCE
from agent.drivers.xapi.pool import PoolClient
from agent.drivers.xapi.tasks import PoolOps
from agent.revert import Reverter
from controller.cli.xcpng_check_reads import Finding, check_class

MiB = 1024 * 1024
GRACE = 20.0  # seconds clean_shutdown may take before the VM is forced off
WAIT = 120.0  # seconds to wait for the pool's events to show a change


class StepFailed(Exception):
    """A write step failed; its Finding is recorded already."""


class WriteCheck:
    """One --write run (see the module docstring): each step's Finding goes to `record`."""

    def __init__(self, new_client: Callable[[], PoolClient], record: Callable[[Finding], None],
                 ) -> None:
        self.new_client, self.record = new_client, record
        self.check_id = f"vauban-check-{uuidlib.uuid4().hex[:8]}"
        self.vdi_uuid = ""

    @contextmanager
    def _step(self, name: str, why_ok: str) -> Iterator[dict[str, Any]]:
        """Time the block; record it ok, or failed (then StepFailed is raised)."""
        data: dict[str, Any] = {}
        started = time.monotonic()
        try:
            yield data
        except Exception as e:  # noqa: BLE001 - an odd answer fails the step, then undone
            why = str(e) if isinstance(e, HypervisorError | ValueError) else repr(e)
            self.record(Finding(f"write.{name}", "failed", why, data,
                                round(time.monotonic() - started, 3)))
            raise StepFailed(name) from e
        self.record(Finding(f"write.{name}", "ok", why_ok, data,
                            round(time.monotonic() - started, 3)))

    def run(self) -> None:
        """Every step, then a check that nothing of ours is left; on a failure the undo
        steps, then the same check (a Finding `write.cleanup` names what is left)."""
        cache = PoolCache()
        loop = EventLoop(self.new_client(), cache)
        loop.start()
        ops = PoolOps(self.new_client(), cache)
        try:
            if not cache.wait_for(lambda c: c.valid, WAIT):
                self.record(Finding("write.events", "failed", f"the event loop did not read "
                                    f"the pool within {WAIT:.0f} s: {cache.problem}"))
                return
            tasks_before = set(cache.all("task"))
            failed = False
            try:
                self._steps(ops, cache)
            except StepFailed:
                failed = True
            try:
                self._leftovers(ops, tasks_before, failed)
            except Exception as e:  # noqa: BLE001 - said, with what to look for by hand
                self.record(Finding("write.cleanup" if failed else "write.leftovers",
                                    "failed", f"could not look for leftovers ({e}): look "
                                    f"for VMs and VDIs named {self.check_id}"))
        finally:
            loop.stop()
            ops.client.close()

    def _steps(self, ops: PoolOps, cache: PoolCache) -> None:
        hypervisor = XapiHypervisor(ops, _no_import, cache_wait=WAIT)
        with Reverter() as revert:
            with self._step("vdi_create", "a 1 MiB VDI on the default SR") as data:
                sr = self._default_sr(cache)
                vdi = ops.call("VDI.create", {
                    "name_label": self.check_id, "name_description": "vauban xcpng check",
                    "SR": ops.ref("SR", sr), "virtual_size": MiB, "type": "user",
                    "sharable": False, "read_only": False,
                    "other_config": {INSTANCE: self.check_id}, "xenstore_data": {},
                    "sm_config": {}, "tags": []})
                self.vdi_uuid = str(ops.call("VDI.get_uuid", vdi))
                revert.add(lambda: _destroy_vdi(ops, self.vdi_uuid), "destroy the VDI")
                data["sr_type"] = (cache.get("SR", sr) or {}).get("type")
            spec = VmSpec(id=self.check_id, name=self.check_id, vcpus=1, memory_mib=256,
                          disks=(DiskSpec(VdiSource(sr, self.vdi_uuid), "raw", "vda"),),
                          console_log=Path("console.log"))  # unused by a pool
            with self._step("vm_define", "cloned from the default template, provisioned"):
                hypervisor.define(spec)
                revert.add(lambda: hypervisor.undefine(spec.id), "destroy the VM")
            self._records(ops)
            with self._step("vm_start", "running"):
                hypervisor.start(spec.id)
            with self._step("vm_stop", f"halted (clean_shutdown, forced after {GRACE:.0f} s)"):
                hypervisor.stop(spec.id, grace_seconds=GRACE)
            with self._step("vm_destroy", "the VM and its VDI destroyed"):
                hypervisor.undefine(spec.id)
            revert.success()

    def _records(self, ops: PoolOps) -> None:
        """The field checks of VDI, VBD and task records, now that the pool holds some
        (ours; a task made with task.create, as imports do, destroyed right after)."""
        for cls in ("VDI", "VBD", "task"):
            started = time.monotonic()
            try:
                with ops.exclusive() as client:
                    task = client.call("task.create", self.check_id, "") if cls == "task" else ""
                    try:
                        finding, _ = check_class(client, cls)
                    finally:
                        if task:
                            client.call("task.destroy", task)
            except XapiError as e:
                finding = Finding(f"records.{cls}", "failed", str(e))
            finding.check = f"write.records.{cls}"
            finding.seconds = round(time.monotonic() - started, 3)
            self.record(finding)

    @staticmethod
    def _default_sr(cache: PoolCache) -> str:
        """The pool's default SR (its uuid); ValueError when it has none."""
        pool, = cache.all("pool").values()
        if not pool.get("default_SR"):
            raise ValueError("the pool has no default SR")
        return str(pool["default_SR"])

    def _leftovers(self, ops: PoolOps, tasks_before: set[str], failed: bool) -> None:
        """Record what the run left in the pool: VMs and VDIs of ours, and tasks that
        were not there before (read from the pool itself, not the cache)."""
        started = time.monotonic()
        left: list[str] = []
        for cls in ("VM", "VDI"):
            for record in ops.call(f"{cls}.get_all_records").values():
                if (record.get("other_config") or {}).get(INSTANCE) == self.check_id:
                    left.append(f"{cls} {record.get('uuid')} ({self.check_id})")
        tasks = {r.get("uuid"): r.get("name_label")
                 for r in ops.call("task.get_all_records").values()}
        left += [f"task {u} ({name})" for u, name in tasks.items() if u not in tasks_before]
        name = "write.cleanup" if failed else "write.leftovers"
        seconds = round(time.monotonic() - started, 3)
        if left:
            self.record(Finding(name, "failed", "left in the pool (destroy by hand): "
                                + "; ".join(left), {"left": len(left)}, seconds))
        elif failed:
            self.record(Finding(name, "ok", "undone: nothing of the check is left",
                                {"left": 0}, seconds))
        else:
            self.record(Finding(name, "ok", "no VM, VDI or task of the check is left",
                                {"left": 0}, seconds))


def _destroy_vdi(ops: PoolOps, uuid: str) -> None:
    """VDI.destroy; a VDI gone already (destroyed with its VM) is fine."""
    try:
        ops.call("VDI.destroy", ops.ref("VDI", uuid))
    except XapiError as e:
        if e.code not in ("UUID_INVALID", "HANDLE_INVALID"):
            raise


def _no_import(path: Path, name: str, other_config: dict[str, str]) -> str:
    raise HypervisorError("the check imports no file")
