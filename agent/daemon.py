"""The agent process: long-poll the desired state, reconcile it, report what is observed.

Three threads: the poller fetches desired states, the reconciler applies the
newest one (and re-checks periodically), the reporter sends status on every
change and as a heartbeat. Beside them, the console dialer long-polls the consoles
users ask for and dials each back (agent/consoles.py). The controller being away
never stops a VM: the agent keeps the last desired state and retries.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from agent import __version__, certs, inventory
from agent.client import ControllerClient, ControllerUnavailable, Refused, keep_asking
from agent.config import AgentConfig, NodeIdentity
from agent.consoles import ConsoleDialer
from agent.dhcp.responder import DhcpResponder
from agent.drivers.gpu.base import GpuDriver
from agent.drivers.gpu.none import NoGpuDriver
from agent.drivers.hypervisor.base import HypervisorDriver
from agent.drivers.network.base import NetworkDriver
from agent.drivers.network.secgroups import SecurityGroupFirewall
from agent.drivers.storage.base import StorageDriver
from agent.drivers.storage.rbd.driver import RbdDriver
from agent.fencing import Watchdog
from agent.hypervisor_tls import HypervisorTls, HypervisorTlsError
from agent.metrics import AgentCollector, MetricsServer, TlsFiles, serve_metrics
from agent.networks import NetworkKeeper
from agent.protocol import (
    MIGRATION_FEATURES,
    DesiredState,
    Inventory,
    NodeGpu,
    NodeStatus,
    ObservedVolume,
    StorageSettings,
    StorageStatus,
    XapiPoolInfo,
)
from agent.reconcile import Reconciler
from agent.retry import FailureLedger, controller_retry_delay
from agent.storage_heartbeat import StorageHeartbeat
from agent.storage_sampler import StorageSampler
from hardware.kvmprobe import KvmProbe

log = logging.getLogger(__name__)
ARRIVAL_POLL_S = 0.5  # how often a node looks whether a migrating VM has arrived

RECHECK_S = 10.0  # a pass runs at least this often, to catch changes made behind our back
SWEEP_EVERY_S = 600.0  # storage leftovers of interrupted work are looked for this often
SWEEP_ID = "temporary-imports"  # the object a failed sweep is reported under
CERT_UNREADABLE_RETRY_S = 60.0
CERT_CHECK_MAX_S = 3600.0  # the certificate's renewal time is looked at again at least this often


class Agent:
    def __init__(self, config: AgentConfig, identity: NodeIdentity, client: ControllerClient,
                 hypervisor: HypervisorDriver, storage: StorageDriver, kvm: KvmProbe,
                 storage_driver: str, stopping: threading.Event | None = None,
                 prepare_disks: Callable[[], None] = lambda: None,
                 network: NetworkDriver | None = None, gpu: GpuDriver | None = None,
                 hardware: inventory.HardwareReporter | None = None,
                 settings: StorageSettings | None = None,
                 hypervisor_tls: HypervisorTls | None = None,
                 pool: Callable[[], XapiPoolInfo] | None = None) -> None:
        self.config = config
        self.identity = identity
        self.client = client
        self.hypervisor = hypervisor
        self.storage = storage
        self.kvm = kvm
        self.storage_driver = storage_driver
        self.underlay_ip = inventory.underlay_address(identity.controller_url)
        self.gpu = gpu or NoGpuDriver()
        self.hardware = hardware
        self.hypervisor_tls = hypervisor_tls
        self.pool = pool  # an XCP-ng pool's agent: its pool as last read
        self.stopping = stopping or threading.Event()
        self._desired_ready = threading.Condition()
        self._latest: DesiredState | None = None
        self._repass = False  # a VM task ended: look again at once
        self._report_now = threading.Event()
        self._arrivals_told: set[str] = set()  # arrived VMs already reported at once
        self.refused: Refused | None = None  # another protocol, or the node was removed
        ledger = FailureLedger()  # every failure of this agent, reported with its status
        # on shared storage: the storage heartbeat and the self-fence (agent.fencing)
        self.watchdog: Watchdog | None = None
        self.heartbeat: StorageHeartbeat | None = None
        rbd = settings.rbd if settings is not None and settings.driver == "rbd" else None
        if rbd is not None and isinstance(storage, RbdDriver):
            self.watchdog = Watchdog(rbd.fence_after_s, lambda: self.reconciler.destroy_own_vms(),
                                     state_dir=config.data_dir)
            self.heartbeat = StorageHeartbeat(storage.conn, rbd.pool, identity.node_id,
                                              rbd.heartbeat_interval_s, self.watchdog)
        self.reconciler = Reconciler(
            hypervisor, storage, client.image_chunks, config.instances_dir,
            owner=identity.node_id, stop_grace_s=config.stop_grace_s,
            on_change=self._report_now.set, on_settled=self._request_pass,
            prepare_disks=prepare_disks,
            networks=NetworkKeeper(network, self.underlay_ip, config.data_dir / "networks.json",
                                   SecurityGroupFirewall(), ledger, DhcpResponder())
            if network is not None else None,
            gpu=self.gpu, ledger=ledger,
            start_refusal=self.watchdog.start_refusal if self.watchdog else lambda: None,
        )
        # storage answers on its own thread: a backend that hangs never holds up a report
        self.storage_sampler = StorageSampler(
            storage, storage_driver, self.reconciler.observe_volumes, config.heartbeat_s,
            on_change=self._report_now.set)

    def run(self) -> None:
        """Run until `stop()`; VMs are left as they are when it returns."""
        dialer = ConsoleDialer(self.client, self.hypervisor, self.stopping, self._refused,
                               self._retry_delay)
        # the long-polls hold no state worth waiting for when stopping
        polls = [threading.Thread(target=dialer.run, name="consoles", daemon=True)]
        threads = [
            threading.Thread(target=self._poll_loop, name="poll", daemon=True),
            threading.Thread(target=self._reconcile_loop, name="reconcile", daemon=True),
            threading.Thread(target=self._report_loop, name="report", daemon=True),
            threading.Thread(target=self._sweep_loop, name="sweep", daemon=True),
            threading.Thread(target=self._certificate_loop, name="certificate", daemon=True),
        ]
        if self.hypervisor_tls is not None:
            # not waited for: a libvirtd restart it runs may be queued behind this very
            # agent's stop job (the unit is ordered after libvirtd)
            polls.append(threading.Thread(target=self._hypervisor_tls_loop,
                                          name="hypervisor-tls", daemon=True))
        self.storage_sampler.start()
        if self.heartbeat is not None:
            self.heartbeat.start()
        metrics = self._serve_metrics()
        for t in threads + polls:
            t.start()
        self.stopping.wait()
        if self.heartbeat is not None:  # first: the polls have ended, the fence stands down
            self.heartbeat.stop()
        if metrics is not None:
            metrics.stop()
        self.storage_sampler.stop()
        with self._desired_ready:
            self._desired_ready.notify_all()
        # the poller may sit in a long-poll; it holds no state worth waiting for
        for t in threads[1:]:
            t.join()
        self.storage_sampler.join()  # a round in flight ends with the driver's timeouts
        if self.heartbeat is not None:
            self.heartbeat.join()  # a write in flight ends with the connection's timeouts
        self.reconciler.pool.shutdown(wait=True)  # a VM task in flight ends its step
        if self.reconciler.networks is not None:
            self.reconciler.networks.close()

    def metrics_collector(self) -> AgentCollector:
        """What a scrape reads: the desired VMs' libvirt statistics, the node, its GPUs."""
        def vms() -> dict[str, str]:
            desired = self.reconciler.desired
            return {vm.id: vm.name for vm in desired.vms} if desired is not None else {}

        return AgentCollector(vms, self.hypervisor.domain_stats, lambda: self._gpus()[0],
                              self.storage_sampler.latest)

    def _serve_metrics(self) -> MetricsServer | None:
        """The metrics listener when the settings ask for one (a failure to bind is logged:
        the agent's work goes on without it)."""
        address = self.config.metrics_address
        if address is None:
            return None
        tls = TlsFiles(self.config.cert_path, self.config.key_path, self.config.ca_path) \
            if self.config.metrics_tls else None
        try:
            server = serve_metrics(self.metrics_collector(), address, self.config.metrics_port,
                                   tls)
        except (OSError, ValueError) as e:
            log.error("metrics not served on %s port %d: %s", address,
                      self.config.metrics_port, e)
            return None
        log.info("metrics served on %s port %d (%s)", address, server.server_address[1],
                 "mutual TLS" if tls else "plain HTTP")
        return server

    def stop(self) -> None:
        self.stopping.set()
        self._report_now.set()
        self.storage_sampler.stop()

    def _refused(self, e: Refused) -> None:
        """Retrying cannot help: say why and stop (VMs keep running)."""
        log.error("the controller refuses this agent: %s; stopping the agent", e)
        self.refused = e
        self.stop()

    def _poll_loop(self) -> None:
        after = -1

        def ask() -> DesiredState | None:
            # the controller's wait once it named one: it keeps this node from looking down
            answer = self.client.desired(after,
                                         self.client.poll_wait_s or self.config.poll_wait_s)
            self._controller_answered()
            return answer

        def take(desired: DesiredState | None) -> None:
            nonlocal after
            if desired is not None and self.watchdog is not None:
                self.watchdog.clear(desired.fence_cleared)
            if desired is not None and desired.generation > after:
                after = desired.generation
                with self._desired_ready:
                    self._latest = desired
                    self._desired_ready.notify_all()

        keep_asking("desired state", self.stopping, ask, take, self._refused, self._retry_delay)

    def _request_pass(self) -> None:
        with self._desired_ready:
            self._repass = True
            self._desired_ready.notify_all()

    def _reconcile_loop(self) -> None:
        applied: int | None = None
        while not self.stopping.is_set():
            with self._desired_ready:
                seen = self._latest is None or self._latest.generation == applied
                if seen and not self._repass:
                    self._desired_ready.wait(RECHECK_S)
                self._repass = False
                desired = self._latest
            if desired is None or self.stopping.is_set():
                continue  # nothing is touched before the controller has spoken once
            try:
                self.reconciler.apply(desired)
                applied = desired.generation
            except Exception:
                log.exception("reconcile pass failed; retrying")
                self.stopping.wait(1.0)

    def _sweep_loop(self) -> None:
        """Storage leftovers of interrupted work are removed at start, then once every
        SWEEP_EVERY_S. Each period's sweep is one request of the agent's retry policy: a
        failure is retried by it and reported with the node's status."""
        ledger, start, done = self.reconciler.ledger, time.monotonic(), -1
        while not self.stopping.is_set():
            period = int((time.monotonic() - start) // SWEEP_EVERY_S)
            if period != done and ledger.may_try("image", SWEEP_ID, "sweep", period):
                try:
                    self.storage.sweep_leftovers()
                except Exception as e:
                    ledger.failed("image", SWEEP_ID, "sweep", period, e)
                    log.warning("sweeping storage leftovers failed: %s", e)
                else:
                    ledger.succeeded("image", SWEEP_ID, "sweep")
                    done = period
            self.stopping.wait(RECHECK_S)

    def _certificate_loop(self) -> None:
        """Renew the node's certificate once less than `cert_renew_fraction` of its lifetime
        is left; a failed renewal is retried by the agent's retry policy, each failure
        logged, while the current certificate stays in use."""
        failures = 0
        while not self.stopping.is_set():
            try:
                cert = certs.load_certificate(self.config)
            except (OSError, ValueError) as e:  # the agent's own file: say so, look again
                log.error("the node certificate %s cannot be read: %s", self.config.cert_path,
                          e)
                self.stopping.wait(CERT_UNREADABLE_RETRY_S)
                continue
            wait = (certs.renewal_due(cert, self.config.cert_renew_fraction)
                    - datetime.now(UTC)).total_seconds()
            if wait > 0:
                self.stopping.wait(min(wait, CERT_CHECK_MAX_S))
                continue
            try:
                new = certs.renew(self.config, self.identity.node_id, self.client)
            except Refused as e:
                self._refused(e)
                continue
            except (ControllerUnavailable, certs.RenewalError, OSError) as e:
                failures += 1
                ends = cert.not_valid_after_utc
                if ends <= datetime.now(UTC):
                    log.error("the node certificate expired at %s and the controller refuses "
                              "it (%s): remove this node (vauban node remove) and join this "
                              "machine again with a new join token", ends.isoformat(), e)
                else:
                    log.warning("renewing the node certificate (valid until %s) failed: %s",
                                ends.isoformat(), e)
                self.stopping.wait(self._retry_delay(failures))
                continue
            failures = 0
            log.info("renewed the node certificate: serial %x, valid until %s",
                     new.serial_number, new.not_valid_after_utc.isoformat())

    def _hypervisor_tls_loop(self) -> None:
        """Keep the hypervisor's TLS material current and libvirtd's TLS listener on
        (agent/hypervisor_tls.py); a failed round is logged and retried by the agent's
        retry policy while migrations to and from this node are reported impossible."""
        tls = self.hypervisor_tls
        assert tls is not None
        failures = 0
        while not self.stopping.is_set():
            was_ready = tls.ready()
            try:
                due = tls.keep(self.client)
            except Refused as e:
                self._refused(e)
                continue
            except (ControllerUnavailable, certs.RenewalError, HypervisorTlsError,
                    OSError) as e:
                failures += 1
                log.warning("hypervisor TLS (migrations) not ready: %s", e)
                if was_ready:
                    self._report_now.set()
                self.stopping.wait(self._retry_delay(failures))
                continue
            failures = 0
            if not was_ready:
                log.info("hypervisor TLS ready: %s", tls.detail)
                self._report_now.set()  # the controller learns at once it can migrate here
            wait = (due - datetime.now(UTC)).total_seconds()
            self.stopping.wait(min(max(wait, 1.0), CERT_CHECK_MAX_S))

    def report_interval_s(self) -> float:
        """The controller's interval for this region's size, never under our own setting;
        spread by ±10% so that agents started together do not report together."""
        told = self.client.report_interval_s or 0.0
        return max(self.config.heartbeat_s, told) * random.uniform(0.9, 1.1)

    def _controller_answered(self) -> None:
        """Controller contact for the fence watchdog (judged before it is recorded)."""
        if self.watchdog is not None:
            self.watchdog.controller_ok()

    def _retry_delay(self, failures: int) -> float:
        """The controller away: ask again soon, then less often (see controller_retry_delay)."""
        return controller_retry_delay(failures, self.client.report_interval_s, random.random)

    def _report_loop(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            self._wait_for_report()
            self._report_now.clear()
            try:
                self.client.report(self.status())
                self._controller_answered()
                failures = 0
            except Refused as e:
                self._refused(e)
            except ControllerUnavailable as e:
                log.warning("status not delivered: %s", e)
                failures += 1
                self.stopping.wait(self._retry_delay(failures))
                self._report_now.set()  # the undelivered status goes as soon as the wait ends
            except Exception:
                log.exception("status report failed")
                self.stopping.wait(1.0)

    def _wait_for_report(self) -> None:
        """Until the report interval passed or a report is asked for; while a VM is to
        arrive by migration, also until it has (looked for every ARRIVAL_POLL_S): the
        move completes on this node's word, so that word goes at once."""
        deadline = time.monotonic() + self.report_interval_s()
        while (remaining := deadline - time.monotonic()) > 0 and not self.stopping.is_set():
            if not self.reconciler.awaiting_arrival():
                self._report_now.wait(remaining)  # a preparation ending asks for a report
                return
            if self._report_now.wait(min(remaining, ARRIVAL_POLL_S)):
                return
            arrived = self.reconciler.arrivals()
            if arrived - self._arrivals_told:
                self._arrivals_told = set(arrived)
                self._request_pass()  # one moved cold is turned off by a pass, at once
                return

    def status(self) -> NodeStatus:
        """The node's status at once: storage as last sampled (a new sample is asked for,
        and reported when it says something new)."""
        self.storage_sampler.request()
        return NodeStatus(
            applied_generation=self.reconciler.applied_generation,
            inventory=self.inventory(),
            vms=self.reconciler.observe(),
            volumes=self._volumes(),
            storage=self.storage_status(),
            failures=self.reconciler.report_failures(),
            sent_at=datetime.now(UTC),
            self_fenced_at=self.watchdog.fenced_at if self.watchdog else None,
        )

    def _volumes(self) -> list[ObservedVolume] | None:
        return self.storage_sampler.latest().volumes

    def _free_bytes(self) -> int:
        return self.storage_sampler.latest().free_bytes

    def storage_status(self) -> StorageStatus | None:
        """Health and pools as last sampled, at once; an unreachable backend, or one whose
        answer is late, is a status, not a failed or late report. None: not known yet."""
        storage = self.storage_sampler.latest().storage
        if storage is not None and self.heartbeat is not None:
            storage = storage.model_copy(update={"client_addrs": self.heartbeat.client_addrs()})
        return storage

    def _gpus(self) -> tuple[list[NodeGpu], str]:
        try:
            return self.gpu.discover()
        except Exception as e:  # a GPU that cannot be read must not stop the heartbeat
            log.warning("GPUs unknown: %s", e)
            return [], f"GPU discovery failed: {e}"

    def inventory(self) -> Inventory:
        if self.pool is not None:
            return self._pool_inventory(self.pool())
        model, flags = inventory.cpu_model_and_flags()
        hardware, report = self.hardware.current() if self.hardware else (None, None)
        gpus, nvml_detail = self._gpus()
        return Inventory(
            hostname=inventory.hostname(), cpu_model=model, cpu_flags=flags,
            cpus=inventory.cpu_count(), memory_mib=inventory.memory_mib(),
            kvm_device=self.kvm.device, kvm_usable=self.kvm.usable,
            kvm_probe_detail=self.kvm.detail, disks=inventory.disks(), nics=inventory.nics(),
            hypervisor=self.config.hypervisor, storage=self.storage_driver,
            storage_free_bytes=self._free_bytes(), agent_version=__version__,
            underlay_ip=self.underlay_ip, hardware=hardware, qualification=report,
            gpus=gpus, nvml_detail=nvml_detail, ssh_host_keys=inventory.ssh_host_keys(),
            migration_ready=self.hypervisor.info().live_migration,
            migration_features=list(MIGRATION_FEATURES),
        )

    def _pool_inventory(self, info: XapiPoolInfo) -> Inventory:
        """An XCP-ng pool as one node: its enabled, live hosts' sums (at least 1 CPU and 1
        MiB, what an empty or unread pool shows: nothing fits). Nothing of this machine."""
        cpus, memory_mib = info.capacity()
        return Inventory(
            hostname=f"pool {info.name or info.uuid}"[:255], cpu_model="XCP-ng pool",
            cpu_flags=[], cpus=max(1, cpus), memory_mib=max(1, memory_mib),
            kvm_device=False, kvm_usable=False, kvm_probe_detail=self.kvm.detail, disks=[],
            nics=[], hypervisor=self.config.hypervisor, storage=self.storage_driver,
            storage_free_bytes=self._free_bytes(), agent_version=__version__,
            migration_ready=False, pool=info)
