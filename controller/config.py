"""Controller settings, from the command line or VAUBAN_* environment variables."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.protocol import RENEW_FRACTION
from controller.pki import CA_VALIDITY, LEAF_VALIDITY
from controller.services.pace import REPORT_FLOOR_S

MIN_CERT_LIFETIME_S = 60  # renewed at a third left: below a minute, renewal would never rest
MIN_RENEW_FRACTION, MAX_RENEW_FRACTION = 0.05, 0.9  # as the agent's cert_renew_fraction
MAX_VNI = 2**24 - 1

@dataclass(frozen=True)
class ClientLimits:
    """What one client may hold of the server (see controller.serving)."""

    max_connections: int = 20000
    max_per_source: int = 256
    handshake_s: float = 10.0
    header_s: float = 15.0
    idle_s: float = 30.0
    node_keepalive_s: float = 900.0


@dataclass(frozen=True)
class LoginLimits:
    """How failed logins are locked out (see controller.services.login)."""

    max_failures: int = 5  # of one user name within lockout_s
    max_failures_per_source: int = 20  # from one address within lockout_s
    lockout_s: float = 900.0
    concurrent: int = 2  # password hashes at once in one process
    slot_wait_s: float = 5.0


@dataclass(frozen=True)
class SessionLimits:
    """How long a browser session lasts (see controller.services.sessions)."""

    idle_s: float = 1800.0  # unused this long, it ends
    max_s: float = 12 * 3600.0  # this long after its login, it ends however much it is used


POSITIVE_SETTINGS = ("disk_allocation_ratio", "max_image_bytes", "max_connections",
                     "node_down_after_s", "max_reports_per_s",
                     "max_connections_per_source", "tls_handshake_timeout_s",
                     "request_header_timeout_s", "client_idle_timeout_s", "node_keepalive_s",
                     "rollout_upgrade_wait_s", "rollout_forks", "rollout_batch_timeout_s",
                     "workers", "login_max_failures", "login_max_failures_per_source",
                     "login_lockout_s", "login_concurrency", "database_pool_size",
                     "database_pool_wait_s", "session_idle_s", "session_max_s",
                     "events_keep_s", "events_keep_count", "events_keepalive_s",
                     "storage_heartbeat_interval_s", "fence_after_s", "storage_down_after_s",
                     "fence_step_timeout_s")


@dataclass(frozen=True)
class ControllerConfig:
    data_dir: Path
    database_url: str = ""  # default: SQLite in data_dir
    host: str = "127.0.0.1"
    port: int = 8443
    server_names: tuple[str, ...] = field(default_factory=tuple)  # extra names in the TLS cert
    node_down_after_s: float = 30.0  # a node silent this long is down
    # status reports of the whole region per second at most: agents' report interval grows
    # with the region to stay under it (their long-polls prove them alive meanwhile)
    max_reports_per_s: float = 50.0
    cpu_allocation_ratio: float = 4.0  # vCPUs per host CPU the scheduler may place
    reserved_host_memory_mib: int = 512  # kept free for the host on every node
    disk_allocation_ratio: float = 1.0  # GiB of VM disks per GiB of storage (see docs/storage.md)
    max_connections: int = 20000  # open client connections (long-polls, streams) at once
    max_connections_per_source: int = 256  # from one address; more are closed at once
    tls_handshake_timeout_s: float = 10.0
    request_header_timeout_s: float = 15.0  # also how long an idle keep-alive connection stays
    client_idle_timeout_s: float = 30.0  # longest silence while a body is read or sent
    # how long a node's idle connection stays open (and its request headers may take): longer
    # than its report interval, so a report does not pay a TLS handshake every time
    node_keepalive_s: float = 900.0
    operation_silence_s: float = 120.0  # an operation fails when its node is silent this long
    storage: str = "localfs"  # or "rbd": every node then uses the Ceph cluster below
    ceph_conf: Path | None = None
    ceph_keyring: Path | None = None  # keyring of ceph_client (a dedicated client, not admin)
    ceph_client: str = "vauban"
    ceph_pool: str = "vauban"  # images and VM root disks
    ceph_volume_pools: tuple[str, ...] = ()  # pools volumes may use; default: ceph_pool
    # keyring of client.bootstrap-osd: nodes labelled ceph=osd make OSDs with it (rollout)
    ceph_bootstrap_osd_keyring: Path | None = None
    # keyring of client.vauban-fence (mon 'allow r, allow command "osd blocklist"'): the
    # controller fences and unfences nodes with it; never the nodes' shared client
    ceph_fence_keyring: Path | None = None
    # HA timing (docs/design/ha-plan.md 3.1): a node writes its storage heartbeat every
    # heartbeat_interval_s and destroys its VMs once it has heard neither the controller
    # nor its storage for fence_after_s; its heartbeat is stale once unchanged this long
    storage_heartbeat_interval_s: float = 2.0
    fence_after_s: float = 20.0
    storage_down_after_s: float = 30.0
    # a failover's fencing step (a BMC's retries and timeout) is done by then, or it is
    # taken to have died with its controller process and is tried again
    fence_step_timeout_s: float = 120.0
    max_image_bytes: int = 64 * 1024**3  # an upload declaring more is refused unread (413)
    # the VXLAN ids tenant networks take (each the lowest free one): keep them clear of any
    # other VXLAN on the underlay (e.g. an EVPN fabric's)
    vni_first: int = 1000
    vni_last: int = MAX_VNI
    # the controller's URL as nodes reach it (rollouts join nodes to it); default: the
    # address it listens on, unless that is a wildcard
    advertise_url: str = ""
    # where release archives lie (vauban-<version>-wheels.tar, built by make dist); a
    # rollout installs the version it is asked for, by default the controller's own
    releases_dir: Path | None = None  # default: data_dir/releases
    playbooks_dir: Path = Path(__file__).resolve().parents[1] / "playbooks"
    rollout_upgrade_wait_s: float = 300.0  # an upgraded node must report its version within
    rollout_vars: Path | None = None  # JSON of the site's playbook variables (playbooks/README)
    rollout_forks: int = 20  # hosts Ansible works on at once within a batch
    rollout_batch_timeout_s: float = 3600.0  # a batch still running this long is failed
    # server processes sharing the port; above 1 needs PostgreSQL, through which they hear
    # of each other's changes (controller.notices)
    workers: int = 1
    # PostgreSQL connections per worker: kept open, more opened at need, and how long a
    # request waits for one when all are in use before it is answered 503
    database_pool_size: int = 10
    database_pool_overflow: int = 20
    database_pool_wait_s: float = 30.0
    # failed logins of one user name / from one address within login_lockout_s that lock it
    # out for login_lockout_s (see controller.services.login)
    login_max_failures: int = 5
    login_max_failures_per_source: int = 20
    login_lockout_s: float = 900.0
    login_concurrency: int = 2  # password hashes at once in one worker
    # a browser session (see controller.services.sessions) ends once unused this long, and
    # this long after its login however much it is used
    session_idle_s: float = 1800.0
    session_max_s: float = 12 * 3600.0
    # the event log (docs/events.md): events older than this, or beyond this many, are
    # pruned; a client resuming from a pruned one is told to refetch (stream.reset)
    events_keep_s: float = 3600.0
    events_keep_count: int = 100_000
    # a comment line this often on an idle stream; the caller's token is checked then too
    events_keepalive_s: float = 15.0
    # lifetimes of the certificates the region CA signs; each is renewed once less than a
    # third of it is left (nodes by their agent, the server by the controller)
    node_cert_lifetime_s: int = int(LEAF_VALIDITY.total_seconds())
    server_cert_lifetime_s: int = int(LEAF_VALIDITY.total_seconds())
    # the server certificate is renewed once less than this part of its lifetime is left
    # (the agent's cert_renew_fraction is the same for node certificates)
    server_cert_renew_fraction: float = RENEW_FRACTION

    def __post_init__(self) -> None:
        for name in POSITIVE_SETTINGS:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, not {value}")
        if self.database_pool_overflow < 0:
            raise ValueError("database_pool_overflow must be 0 or more, not "
                             f"{self.database_pool_overflow}")
        longest = int(CA_VALIDITY.total_seconds())
        for name in ("node_cert_lifetime_s", "server_cert_lifetime_s"):
            value = getattr(self, name)
            if not (isinstance(value, int) and MIN_CERT_LIFETIME_S <= value <= longest):
                raise ValueError(f"{name} must be a whole number of seconds from "
                                 f"{MIN_CERT_LIFETIME_S} to {longest} (the CA's own "
                                 f"validity), not {value}")
        if not (math.isfinite(self.server_cert_renew_fraction)
                and MIN_RENEW_FRACTION <= self.server_cert_renew_fraction
                <= MAX_RENEW_FRACTION):
            raise ValueError(f"server_cert_renew_fraction must be from {MIN_RENEW_FRACTION} "
                             f"to {MAX_RENEW_FRACTION}, not {self.server_cert_renew_fraction}")
        if not 1 <= self.vni_first <= self.vni_last <= MAX_VNI:
            raise ValueError(f"the VNI range must lie within 1-{MAX_VNI} and not be empty, "
                             f"not {self.vni_first}-{self.vni_last}")
        if self.storage == "rbd":
            check_fence_timing(self.fence_after_s, self.storage_heartbeat_interval_s,
                               self.node_down_after_s, self.storage_down_after_s)
        if self.workers > 1 and not self.db_url.startswith("postgresql"):
            raise ValueError(f"workers is {self.workers}, but more than one worker needs "
                             "PostgreSQL (VAUBAN_DATABASE_URL): workers hear of each "
                             "other's changes through it; SQLite is served by one process")

    def client_limits(self) -> ClientLimits:
        """What one worker allows: the connection limits shared out among the workers."""
        return ClientLimits(
            max_connections=math.ceil(self.max_connections / self.workers),
            max_per_source=math.ceil(self.max_connections_per_source / self.workers),
            handshake_s=self.tls_handshake_timeout_s, header_s=self.request_header_timeout_s,
            idle_s=self.client_idle_timeout_s, node_keepalive_s=self.node_keepalive_s)

    def login_limits(self) -> LoginLimits:
        return LoginLimits(max_failures=self.login_max_failures,
                           max_failures_per_source=self.login_max_failures_per_source,
                           lockout_s=self.login_lockout_s, concurrent=self.login_concurrency)

    def session_limits(self) -> SessionLimits:
        return SessionLimits(idle_s=self.session_idle_s, max_s=self.session_max_s)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'controller.db'}"

    @property
    def image_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def pki_dir(self) -> Path:
        return self.data_dir / "pki"

    @property
    def releases(self) -> Path:
        return self.releases_dir or self.data_dir / "releases"

    @property
    def rollouts_dir(self) -> Path:
        return self.data_dir / "rollouts"

    @property
    def ceph_dir(self) -> Path:
        """Where a rollout puts what a node labelled ceph=mon bootstrapped: ceph.conf and
        the keyrings of the controller's client and of client.bootstrap-osd (0600)."""
        return self.data_dir / "ceph"

    def node_url(self) -> str | None:
        """The controller's URL as nodes reach it, or None when it listens on a wildcard
        address and VAUBAN_ADVERTISE_URL does not say."""
        if self.advertise_url:
            return self.advertise_url.rstrip("/")
        if self.host in ("0.0.0.0", "::"):
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    @property
    def admin_password_file(self) -> Path:
        return self.data_dir / "admin-password"

    @property
    def admin_totp_file(self) -> Path:
        """The bootstrap admin's TOTP seed as an otpauth:// URI (0600), beside its password."""
        return self.data_dir / "admin-totp"

    def tls_names(self) -> list[str]:
        names = ["localhost", "127.0.0.1", "::1", socket.gethostname()]
        if self.host not in ("0.0.0.0", "::"):
            names.insert(0, self.host)
        return list(dict.fromkeys([*names, *self.server_names]))

    @classmethod
    def from_env(cls, **overrides: object) -> ControllerConfig:
        """Settings from VAUBAN_* variables; keyword arguments win over the environment."""
        env = os.environ
        values: dict[str, object] = {
            "data_dir": Path(env.get("VAUBAN_DATA_DIR", "var/controller")).resolve(),
            "database_url": env.get("VAUBAN_DATABASE_URL", ""),
            "host": env.get("VAUBAN_HOST", "127.0.0.1"),
            "port": int(env.get("VAUBAN_PORT", "8443")),
            "server_names": tuple(n for n in env.get("VAUBAN_SERVER_NAMES", "").split(",") if n),
            "storage": env.get("VAUBAN_STORAGE", "localfs"),
            "ceph_conf": Path(env["VAUBAN_CEPH_CONF"]) if env.get("VAUBAN_CEPH_CONF") else None,
            "ceph_keyring": Path(env["VAUBAN_CEPH_KEYRING"])
            if env.get("VAUBAN_CEPH_KEYRING") else None,
            "ceph_client": env.get("VAUBAN_CEPH_CLIENT", "vauban"),
            "ceph_pool": env.get("VAUBAN_CEPH_POOL", "vauban"),
            "ceph_volume_pools": tuple(
                p for p in env.get("VAUBAN_CEPH_VOLUME_POOLS", "").split(",") if p),
            "ceph_bootstrap_osd_keyring": Path(env["VAUBAN_CEPH_BOOTSTRAP_OSD_KEYRING"])
            if env.get("VAUBAN_CEPH_BOOTSTRAP_OSD_KEYRING") else None,
            "ceph_fence_keyring": Path(env["VAUBAN_CEPH_FENCE_KEYRING"])
            if env.get("VAUBAN_CEPH_FENCE_KEYRING") else None,
            "advertise_url": env.get("VAUBAN_ADVERTISE_URL", ""),
            "releases_dir": Path(env["VAUBAN_RELEASES"]).resolve()
            if env.get("VAUBAN_RELEASES") else None,
            "rollout_vars": Path(env["VAUBAN_ROLLOUT_VARS"]).resolve()
            if env.get("VAUBAN_ROLLOUT_VARS") else None,
            **({"playbooks_dir": Path(env["VAUBAN_PLAYBOOKS"]).resolve()}
               if env.get("VAUBAN_PLAYBOOKS") else {}),
            **_numbers(env, {
                "disk_allocation_ratio": ("VAUBAN_DISK_ALLOCATION_RATIO", float),
                "node_down_after_s": ("VAUBAN_NODE_DOWN_AFTER", float),
                "storage_heartbeat_interval_s": ("VAUBAN_STORAGE_HEARTBEAT_INTERVAL", float),
                "fence_after_s": ("VAUBAN_FENCE_AFTER", float),
                "storage_down_after_s": ("VAUBAN_STORAGE_DOWN_AFTER", float),
                "fence_step_timeout_s": ("VAUBAN_FENCE_STEP_TIMEOUT", float),
                "max_reports_per_s": ("VAUBAN_MAX_REPORTS_PER_SECOND", float),
                "max_image_bytes": ("VAUBAN_MAX_IMAGE_BYTES", int),
                "vni_first": ("VAUBAN_VNI_FIRST", int),
                "vni_last": ("VAUBAN_VNI_LAST", int),
                "max_connections": ("VAUBAN_MAX_CONNECTIONS", int),
                "max_connections_per_source": ("VAUBAN_MAX_CONNECTIONS_PER_SOURCE", int),
                "tls_handshake_timeout_s": ("VAUBAN_TLS_HANDSHAKE_TIMEOUT", float),
                "request_header_timeout_s": ("VAUBAN_REQUEST_HEADER_TIMEOUT", float),
                "client_idle_timeout_s": ("VAUBAN_CLIENT_IDLE_TIMEOUT", float),
                "node_keepalive_s": ("VAUBAN_NODE_KEEPALIVE", float),
                "rollout_upgrade_wait_s": ("VAUBAN_ROLLOUT_UPGRADE_WAIT", float),
                "rollout_forks": ("VAUBAN_ROLLOUT_FORKS", int),
                "rollout_batch_timeout_s": ("VAUBAN_ROLLOUT_BATCH_TIMEOUT", float),
                "workers": ("VAUBAN_WORKERS", int),
                "database_pool_size": ("VAUBAN_DATABASE_POOL_SIZE", int),
                "database_pool_overflow": ("VAUBAN_DATABASE_POOL_OVERFLOW", int),
                "database_pool_wait_s": ("VAUBAN_DATABASE_POOL_WAIT", float),
                "login_max_failures": ("VAUBAN_LOGIN_MAX_FAILURES", int),
                "login_max_failures_per_source": ("VAUBAN_LOGIN_MAX_FAILURES_PER_SOURCE", int),
                "login_lockout_s": ("VAUBAN_LOGIN_LOCKOUT", float),
                "login_concurrency": ("VAUBAN_LOGIN_CONCURRENCY", int),
                "session_idle_s": ("VAUBAN_SESSION_IDLE_S", float),
                "session_max_s": ("VAUBAN_SESSION_MAX_S", float),
                "events_keep_s": ("VAUBAN_EVENTS_KEEP_S", float),
                "events_keep_count": ("VAUBAN_EVENTS_KEEP_COUNT", int),
                "events_keepalive_s": ("VAUBAN_EVENTS_KEEPALIVE_S", float),
                "server_cert_renew_fraction": ("VAUBAN_SERVER_CERT_RENEW_FRACTION", float),
            }),
            **_lifetime(env, "node_cert_lifetime_s", "VAUBAN_NODE_CERT"),
            **_lifetime(env, "server_cert_lifetime_s", "VAUBAN_SERVER_CERT"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        _bootstrapped_ceph(values)
        return cls(**values)  # type: ignore[arg-type]


def check_fence_timing(fence_after_s: float, heartbeat_interval_s: float,
                       node_down_after_s: float, storage_down_after_s: float,
                       report_interval_s: float = REPORT_FLOOR_S) -> None:
    """ValueError unless a node cut off from the controller and its storage destroys its VMs
    before the controller counts it lost (and may restart them elsewhere):
    fence_after_s + heartbeat_interval_s + report_interval_s < min(node_down_after_s,
    storage_down_after_s). The node judges its fence once per heartbeat interval; the
    report interval bounds how much older its last controller answer may be than the
    controller's last hearing of it. An agent's long-polls follow each other without a
    pause, so a region whose reports grow rarer (controller.services.pace) keeps that bound
    at the floor used here."""
    need = fence_after_s + heartbeat_interval_s + report_interval_s
    down = min(node_down_after_s, storage_down_after_s)
    if not need < down:
        raise ValueError(
            f"fence timing: fence_after_s ({fence_after_s:g}) + storage heartbeat interval "
            f"({heartbeat_interval_s:g}) + report interval ({report_interval_s:g}) = "
            f"{need:g} s must be less than the smaller of node_down_after_s "
            f"({node_down_after_s:g}) and storage_down_after_s ({storage_down_after_s:g}): a "
            "node must stop its VMs before the controller counts it lost")


def _bootstrapped_ceph(values: dict[str, object]) -> None:
    """Without VAUBAN_CEPH_CONF, the cluster a node labelled ceph=mon bootstrapped, where
    a rollout fetched its files into data_dir/ceph: its conf, and each keyring (the
    client's, client.bootstrap-osd's) not configured otherwise. With VAUBAN_CEPH_CONF
    nothing changes: files of two clusters are never mixed."""
    folder = Path(str(values["data_dir"])) / "ceph"
    if values.get("ceph_conf") is not None or not (folder / "ceph.conf").is_file():
        return
    for field_name, file in (("ceph_conf", "ceph.conf"),
                             ("ceph_keyring", f"ceph.client.{values['ceph_client']}.keyring"),
                             ("ceph_bootstrap_osd_keyring", "ceph.client.bootstrap-osd.keyring")):
        if values.get(field_name) is None and (folder / file).is_file():
            values[field_name] = folder / file


def _numbers(env: Mapping[str, str], names: dict[str, tuple[str, Callable[[str], object]]]
             ) -> dict[str, object]:
    """The settings among `names` that the environment sets, converted; a value that is not
    a number raises ValueError naming the variable (ranges are checked by the config)."""
    values: dict[str, object] = {}
    for field_name, (var, convert) in names.items():
        raw = env.get(var, "")
        if raw:
            try:
                values[field_name] = convert(raw)
            except ValueError:
                kind = "a whole number" if convert is int else "a number"
                raise ValueError(f"{var} must be {kind}, not {raw!r}") from None
    return values


def _lifetime(env: Mapping[str, str], field_name: str, prefix: str) -> dict[str, object]:
    """A certificate lifetime in seconds from `<prefix>_DAYS` or, for tests and trials,
    `<prefix>_SECONDS`; {} when neither is set. Both set, or a value that is not a whole
    number, raises ValueError naming the variables (the range is checked by the config)."""
    days, seconds = env.get(f"{prefix}_DAYS", ""), env.get(f"{prefix}_SECONDS", "")
    if days and seconds:
        raise ValueError(f"{prefix}_DAYS and {prefix}_SECONDS are both set; set one")
    values = _numbers(env, {field_name: (f"{prefix}_DAYS" if days else f"{prefix}_SECONDS",
                                         int)})
    if days and field_name in values:
        values[field_name] = int(values[field_name]) * 86400  # type: ignore[call-overload]
    return values
