"""Open the region: directories, database schema, CA, and the first admin."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from agent.protocol import StorageSettings
from controller import storage_settings
from controller.config import ControllerConfig
from controller.db.migrate import upgrade
from controller.db.session import make_engine, make_read_sessionmaker, make_sessionmaker
from controller.eventhub import EventHub, notify_other_processes
from controller.fleet.keys import ensure_fleet_key
from controller.ha import ceph as ha_ceph
from controller.ha.fencer import RegionFencer, ceph_monitor_ips
from controller.ha.storage_watch import StorageWatch
from controller.notices import NoticeListener, announce, new_origin
from controller.pki import RegionCA, fingerprint
from controller.region import ChangeNotifier, Region
from controller.secretbox import RegionKey, ensure_region_key
from controller.services import events, security_groups, tenancy
from controller.services.auth import ensure_admin
from controller.services.heartbeats import HeartbeatBook
from controller.services.login import HashSlots
from controller.services.pace import RegionPace
from controller.services.tenancy import DEFAULT_PROJECT

log = logging.getLogger(__name__)

CA_WARN_BEFORE = timedelta(days=365)


def open_region(config: ControllerConfig) -> Region:
    """Ready the controller's state. Idempotent: a second start keeps CA, data and admin.

    Raises StorageConfigError before touching anything when the storage settings are wrong,
    and RegionKeyError (controller.secretbox) when the region key cannot be trusted.
    """
    def storage(region_tag: str) -> StorageSettings:
        return storage_settings.build(
            config.storage, config.ceph_conf, config.ceph_keyring, config.ceph_client,
            config.ceph_pool, config.ceph_volume_pools, region_tag,
            config.storage_heartbeat_interval_s, config.fence_after_s)

    storage("check")  # refuse wrong settings before anything is made
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # the region key (refused if others may read it), and the fleet key sealed with it
    ensure_fleet_key(config.data_dir)
    region_key = ensure_region_key(config.data_dir)
    config.image_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(config.db_url, config.database_pool_size,
                         config.database_pool_overflow, config.database_pool_wait_s)
    upgrade(engine)
    notifier, heartbeats = ChangeNotifier(), HeartbeatBook()

    def desired_changed(node_ids: set[str]) -> None:
        heartbeats.forget(node_ids)
        notifier.notify(node_ids)

    origin = new_origin()
    sessions = make_sessionmaker(
        engine, on_commit=desired_changed,
        # other processes on the same database hear of the change through it
        before_commit=(lambda db, node_ids: announce(db, origin, node_ids))
        if engine.dialect.name == "postgresql" else None)
    reads = make_read_sessionmaker(engine)
    hub = EventHub(reads, engine, origin)
    postgres = engine.dialect.name == "postgresql"
    events.install(sessions, hub.wake, notify_other_processes(origin) if postgres else None)
    ca = RegionCA(config.pki_dir)
    ca.ensure(config.tls_names(), timedelta(seconds=config.server_cert_lifetime_s),
              config.server_cert_renew_fraction)
    ca_left = ca.ca_not_after() - datetime.now(UTC)
    if ca_left < CA_WARN_BEFORE:
        log.warning("the region CA expires in %d days (%s): nodes pin it, and no certificate "
                    "it signs is valid beyond it; plan a new region CA", ca_left.days,
                    ca.ca_not_after().isoformat())
    with sessions() as db, db.begin():
        made = ensure_admin(db, region_key, config.admin_password_file,
                            config.admin_totp_file)
        if made == "created":
            log.info("created user 'admin'; its password is in %s, its one-time code seed "
                     "(otpauth URI) in %s", config.admin_password_file, config.admin_totp_file)
        elif made == "enrolled":
            log.warning("user 'admin' logs in with a one-time code from now on; its seed "
                        "(otpauth URI) is in %s: add it to an authenticator app",
                        config.admin_totp_file)
        security_groups.ensure_default(db, tenancy.find_project(db, DEFAULT_PROJECT).id)
    ca_sha256 = fingerprint(ca.cert_pem())
    pace = RegionPace(config.max_reports_per_s, config.node_down_after_s)
    pace.refresh(reads)
    watch = storage_watch(config)
    return Region(
        config=config, engine=engine, sessions=sessions, reads=reads,
        ca=ca, notifier=notifier, heartbeats=heartbeats, pace=pace, origin=origin,
        login_slots=HashSlots.of(config.login_limits()), region_key=region_key,
        ca_sha256=ca_sha256, storage=storage(ca_sha256[:12]), events=hub,
        storage_watch=watch, fencer=fencer(config, region_key, watch),
    )


def fencer(config: ControllerConfig, box: RegionKey,
           watch: StorageWatch | None) -> RegionFencer:
    """The region's fencer: BMCs always; Ceph's blocklist where a fence keyring is set.
    Never the controller's own address or a Ceph monitor's."""
    _reader, fence = ha_ceph.accesses(config)
    protected = ceph_monitor_ips(config.ceph_conf) | {"127.0.0.1", "::1"}
    if config.host not in ("0.0.0.0", "::"):
        protected.add(config.host)
    return RegionFencer(box, watch, ha_ceph.Fencer(fence) if fence is not None else None,
                        protected)


def storage_watch(config: ControllerConfig) -> StorageWatch | None:
    """The watch of nodes' storage heartbeats, on a Ceph region (read as its client)."""
    reader, _fence = ha_ceph.accesses(config)
    if reader is None:
        return None
    return StorageWatch(reader, config.ceph_pool, config.storage_down_after_s)


def hear_other_processes(region: Region) -> NoticeListener | None:
    """Start hearing the change notices of the other processes on the region's database
    (PostgreSQL only; SQLite is served by one process). Returns the running listener."""
    if region.engine.dialect.name != "postgresql":
        return None

    def changed_elsewhere(node_ids: list[str]) -> None:
        region.heartbeats.forget(node_ids)
        region.notifier.notify(node_ids)

    def gap() -> None:
        region.heartbeats.forget(region.notifier.notify_all())

    listener = NoticeListener(region.engine, region.origin, changed_elsewhere, gap)
    listener.start()
    return listener
