"""Live migration of a running domain to another node's libvirtd, peer to peer over TLS.

The source's libvirtd drives the whole migration (PEER2PEER): it connects to the
target's libvirtd at `qemu+tls://<address>/system` with this node's hypervisor
certificate, and QEMU's memory stream goes over TLS too (VIR_MIGRATE_TLS), both
checked against the region's CA. The target gets the domain with our metadata's
labels rewritten (the target's agent must find it its own), defined persistently
once it runs there; the source's definition goes at the same moment. A failure at
any step leaves the domain running here: libvirt resumes the source and drops the
target's half-made QEMU and transient definition.

With `copy_disks` (each node's own disks) the writable file disks go along before the
memory: libvirt mirrors them over NBD, TLS-encrypted like the memory stream, into
the files the target made at the same paths (VIR_MIGRATE_NON_SHARED_INC: a qcow2
overlay's own clusters only, its backing image being the same on both nodes). The
read-only seed stays behind: the target built its own.

A stopped VM moves `cold` the same way: started paused here (its guest never runs a
single instruction), migrated paused (not live), left paused there for the target's
agent to turn off before it reports the arrival; on failure turned off here again.
The disks and the definition thus travel over the same authenticated, encrypted
channel as a live move's, and a failure leaves the VM stopped where it was.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import libvirt

from agent.drivers.hypervisor.base import HypervisorError
from agent.drivers.hypervisor.libvirt.config import parse_disks, relabel_domain_xml
from agent.protocol import MigrationOrder

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 1.0
MIGRATE_FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
                 | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
                 | libvirt.VIR_MIGRATE_TLS | libvirt.VIR_MIGRATE_ABORT_ON_ERROR)


def host_in_uri(address: str) -> str:
    """`address` as a URI's host: an IPv6 address in brackets; ValueError if not an IP."""
    ip = ipaddress.ip_address(address)
    return f"[{ip}]" if ip.version == 6 else str(ip)


def migration_flags(order: MigrationOrder) -> int:
    """migrateToURI3's flags for `order` (pure)."""
    flags = MIGRATE_FLAGS | (libvirt.VIR_MIGRATE_NON_SHARED_INC if order.copy_disks else 0)
    if order.cold:  # a guest that must not run: moved paused, and left paused there
        flags = (flags & ~libvirt.VIR_MIGRATE_LIVE) | libvirt.VIR_MIGRATE_PAUSED
    return flags


def disks_to_copy(live_xml: str) -> list[str]:
    """The targets (vda, sda) of the domain's writable file disks: on local storage its
    root disk alone (volumes are shared storage's; the seed is read-only). Pure."""
    try:
        disks = parse_disks(live_xml)
    except ValueError as e:
        raise HypervisorError(f"a disk of the VM cannot be copied: {e}",
                              retryable=False) from e
    return [d.target for d in disks if not d.readonly and isinstance(d.source, Path)]


def migration_params(order: MigrationOrder, live_xml: str,
                     persist_xml: str) -> dict[str, object]:
    """migrateToURI3's parameters for `order` (pure)."""
    params: dict[str, object] = {
        libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{host_in_uri(order.target_address)}",
        libvirt.VIR_MIGRATE_PARAM_DEST_XML: live_xml,
        libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: persist_xml,
    }
    if order.bandwidth_mib_s:  # 0: libvirt's default, no limit
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = order.bandwidth_mib_s
    if order.copy_disks:  # a list: libvirt-python passes one parameter per disk
        params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = disks_to_copy(live_xml)
    return params


def progress_of(stats: dict[str, object], memory_bytes: int = 0) -> int | None:
    """Percent of the data copied, from jobStats; None before the copy starts. Never
    100: the switchover is still to come.

    Disks copied along (disk_total) are mirrored before the memory is sent, when
    libvirt's totals name the disks alone: the memory still to come counts as
    `memory_bytes` (the guest's size) until its own total is known, so the percentage
    does not reach 99 on the disks and fall back once the memory starts.
    """
    disk_total, disk_done = stats.get("disk_total"), stats.get("disk_processed")
    if isinstance(disk_total, int) and disk_total > 0 and isinstance(disk_done, int):
        memory_total = stats.get("memory_total")
        memory_done = stats.get("memory_processed")
        total = disk_total + (memory_total if isinstance(memory_total, int) and memory_total
                              else memory_bytes)
        done = disk_done + (memory_done if isinstance(memory_done, int) else 0)
        return _percent(total, done)
    return _percent(stats.get("data_total") or stats.get("memory_total"),
                    stats.get("data_processed") or stats.get("memory_processed"))


def _percent(total: object, done: object) -> int | None:
    if not isinstance(total, int) or not isinstance(done, int) or total <= 0:
        return None
    return max(0, min(99, done * 100 // total))


class _Watch(threading.Thread):
    """Reports the job's progress every second; aborts it once `deadline` passed."""

    def __init__(self, dom: libvirt.virDomain, deadline: float,
                 on_progress: Callable[[int], None], memory_bytes: int = 0) -> None:
        super().__init__(name=f"migrate-{dom.UUIDString()}", daemon=True)
        self.dom = dom
        self.deadline = deadline
        self.on_progress = on_progress
        self.memory_bytes = memory_bytes  # the guest's: the memory to come after the disks
        self.done = threading.Event()
        self.aborted_remaining: int | None = None  # bytes left when it was aborted

    def run(self) -> None:
        while not self.done.wait(PROGRESS_EVERY_S):
            try:
                stats = self.dom.jobStats()
            except libvirt.libvirtError:
                continue  # between phases, or ended: the migrate call tells how
            percent = progress_of(stats, self.memory_bytes)
            if percent is not None:
                self.on_progress(percent)
            if time.monotonic() >= self.deadline and self.aborted_remaining is None:
                self.aborted_remaining = sum(
                    v for v in (stats.get("memory_remaining"), stats.get("disk_remaining"))
                    if isinstance(v, int))
                try:
                    self.dom.abortJob()
                except libvirt.libvirtError as e:
                    log.warning("could not abort the migration of %s: %s",
                                self.dom.UUIDString(), e)


def migrate(dom: libvirt.virDomain, order: MigrationOrder,
            labels: dict[str, str], on_progress: Callable[[int], None]) -> None:
    """Carry out `order` on `dom` (see HypervisorDriver.migrate): running, live; stopped
    (`order.cold`), started paused for the move and left paused there, its guest never
    running; destroyed here again (still defined) if the move fails."""
    if not order.cold:
        if not dom.isActive():
            raise HypervisorError(f"VM {dom.UUIDString()} is not running: only a running VM "
                                  "moves live", retryable=False)
        _move(dom, order, labels, on_progress, "the VM kept running here")
        return
    if dom.isActive():
        raise HypervisorError(f"VM {dom.UUIDString()} runs: only a stopped VM moves cold",
                              retryable=False)
    try:
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    except libvirt.libvirtError as e:
        raise HypervisorError(f"cannot start the VM paused for its move: "
                              f"{e.get_error_message()}; it stays stopped here",
                              retryable=False) from e
    try:
        _move(dom, order, labels, on_progress, "the VM stays stopped here")
    except BaseException:
        _destroy_paused(dom)
        raise


def _destroy_paused(dom: libvirt.virDomain) -> None:
    """Turn off again the domain started paused for a cold move that failed (its
    definition stays); logged if it cannot be, the agent's next pass stops it."""
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError as e:
        log.error("VM %s: could not turn off again after a failed cold move: %s",
                  dom.UUIDString(), e.get_error_message())


def _move(dom: libvirt.virDomain, order: MigrationOrder, labels: dict[str, str],
          on_progress: Callable[[int], None], kept: str) -> None:
    """migrateToURI3 with `order`'s flags and parameters, its progress followed; a failure
    raised as HypervisorError ending in `kept` (what became of the VM here)."""
    try:
        live_xml = relabel_domain_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE), labels)
        persist_xml = relabel_domain_xml(dom.XMLDesc(
            libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_INACTIVE), labels)
        dom.migrateSetMaxDowntime(order.max_downtime_ms, 0)
        memory_bytes = dom.maxMemory() * 1024 if order.copy_disks else 0
    except libvirt.libvirtError as e:
        raise HypervisorError(f"prepare the migration of {dom.name()}: "
                              f"{e.get_error_message()}; {kept}") from e
    params = migration_params(order, live_xml, persist_xml)
    watch = _Watch(dom, time.monotonic() + order.timeout_s, on_progress, memory_bytes)
    watch.start()
    target = f"qemu+tls://{host_in_uri(order.target_address)}/system"
    try:
        dom.migrateToURI3(target, params, migration_flags(order))
    except libvirt.libvirtError as e:
        if watch.aborted_remaining is not None:
            raise HypervisorError(
                f"migration to {order.target_address} did not finish in {order.timeout_s} s "
                f"(under the {order.max_downtime_ms} ms downtime limit) and was aborted with "
                f"{watch.aborted_remaining // 2**20} MiB of "
                f"{'disk and memory' if order.copy_disks else 'memory'} still to copy; "
                f"{kept}", retryable=False) from e
        raise HypervisorError(f"migration to {order.target_address} failed: "
                              f"{e.get_error_message()}; {kept}", retryable=False) from e
    finally:
        watch.done.set()
        watch.join()


def completed_downtime_ms(dom: libvirt.virDomain) -> int | None:
    """The guest's pause of the migration that brought `dom` here, if libvirt kept it."""
    try:
        stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    except libvirt.libvirtError:
        return None
    downtime = stats.get("downtime")
    return downtime if isinstance(downtime, int) else None
