"""The controller's Ceph side of HA: nodes' storage heartbeats, and fencing by blocklist.

Heartbeats (agent.storage_heartbeat) are read as the region's client (the one whose key
nodes get, `VAUBAN_CEPH_KEYRING`): a node's heartbeat is stale once its sequence number
has not changed for `storage_down_after_s` by the controller's own clock; the node's
`sent_at` is shown, never trusted for that judgement.

Fences are set and lifted as `client.vauban-fence` (`VAUBAN_CEPH_FENCE_KEYRING`, caps
`mon 'allow r, allow command "osd blocklist"'`), never as the nodes' shared client: its
`profile rbd` may add blocklist entries but not remove them, so a fenced node can never
lift its own fence (docs/design/ha-plan.md 0 and 3.2).

The controller serves from a gevent loop: every librados call here runs through
controller.offload, on a real thread. Heartbeats are read over one long-lived connection
(HeartbeatReader); each fence call opens its own short one (fences are rare).
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.protocol import STORAGE_HEARTBEAT_NAMESPACE, storage_heartbeat_object
from controller.config import ControllerConfig
from controller.offload import off_loop
from controller.storage_settings import key_from_keyring

log = logging.getLogger(__name__)

FENCE_USER = "vauban-fence"
FENCE_EXPIRE_S = 7 * 24 * 3600  # long: lifted (Fencer.remove) once the node is known off and back
CONNECT_TIMEOUT_S = 10
READ_WINDOW = 256  # heartbeat reads in flight at once (bench/heartbeats.py)


class CephHaError(Exception):
    """A Ceph call of HA failed; the message says which and why."""


@dataclass(frozen=True)
class CephAccess:
    """How to reach the cluster as one cephx user: ceph.conf (its monitors), id, key."""

    conf: Path
    user: str  # without "client."
    key: str

    def __repr__(self) -> str:  # the key stays out of logs and tracebacks
        return f"CephAccess(conf={self.conf}, user={self.user})"


def accesses(config: ControllerConfig) -> tuple[CephAccess | None, CephAccess | None]:
    """(the region client's access, for heartbeats; the fence client's) from the
    controller's settings; None where not configured. StorageConfigError when a file
    given cannot be read or lacks the key."""
    if config.storage != "rbd" or config.ceph_conf is None:
        return None, None
    reader = CephAccess(config.ceph_conf, config.ceph_client,
                        key_from_keyring(config.ceph_keyring, config.ceph_client)) \
        if config.ceph_keyring is not None else None
    fence = CephAccess(config.ceph_conf, FENCE_USER,
                       key_from_keyring(config.ceph_fence_keyring, FENCE_USER)) \
        if config.ceph_fence_keyring is not None else None
    return reader, fence


def open_cluster(access: CephAccess, timeout_s: float = CONNECT_TIMEOUT_S) -> Any:
    """A `rados.Rados` connected as `access` (key in memory, no log, no admin socket); the
    caller shuts it down. Call it from a real thread (see `off_loop`)."""
    try:
        import rados
    except ImportError as e:
        raise CephHaError(f"Ceph bindings missing ({e}): apt-get install python3-rados") from e
    seconds = str(max(1, round(timeout_s)))
    cluster = rados.Rados(conffile=str(access.conf), rados_id=access.user, conf={
        "key": access.key, "keyring": "", "log_file": "", "log_to_stderr": "false",
        "err_to_stderr": "false", "admin_socket": "", "client_mount_timeout": seconds,
        "rados_mon_op_timeout": seconds, "rados_osd_op_timeout": seconds})
    try:
        cluster.connect()
    except rados.Error as e:
        cluster.shutdown()
        raise CephHaError(f"cannot connect to Ceph as client.{access.user}: {e}") from e
    return cluster


@contextmanager
def connected(access: CephAccess, timeout_s: float = CONNECT_TIMEOUT_S) -> Iterator[Any]:
    """`open_cluster`, shut down when the block ends."""
    cluster = open_cluster(access, timeout_s)
    try:
        yield cluster
    finally:
        cluster.shutdown()


def mon_command(cluster: Any, prefix: str, **args: Any) -> Any:
    """A monitor command's parsed JSON output (None when empty); CephHaError when refused."""
    ret, out, err = cluster.mon_command(json.dumps({"prefix": prefix, "format": "json", **args}),
                                        b"")
    if ret != 0:
        raise CephHaError(f"ceph {prefix} failed ({ret}): {err}")
    return json.loads(out) if out.strip() else None


# -- heartbeats ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Heartbeat:
    """A node's heartbeat object as read: its sequence number and when the node says it
    wrote it (the node's clock)."""

    seq: int
    sent_at: str | None


class HeartbeatReader:
    """Reads nodes' heartbeat objects in `pool` over one long-lived connection as `access`
    (opened at the first read, reopened after a failure): a round every few seconds would
    otherwise authenticate anew each time. One caller at a time (the watch's timer)."""

    def __init__(self, access: CephAccess, pool: str) -> None:
        self.access = access
        self.pool = pool
        self._cluster: Any = None

    def read(self, node_ids: Iterable[str]) -> dict[str, Heartbeat | None]:
        """Each node's heartbeat object (None: none written yet), off the event loop.
        CephHaError when the cluster cannot be read (then nothing is judged)."""
        return off_loop(self._read, list(node_ids))

    def _read(self, node_ids: list[str]) -> dict[str, Heartbeat | None]:
        import rados

        if self._cluster is None:
            self._cluster = open_cluster(self.access)
        try:
            return _read_objects(self._cluster, self.pool, node_ids)
        except rados.Error as e:
            self.close()  # the next round connects afresh
            raise CephHaError(f"reading storage heartbeats in pool {self.pool}: {e}") from e

    def close(self) -> None:
        cluster, self._cluster = self._cluster, None
        if cluster is not None:
            cluster.shutdown()


def read_heartbeats(access: CephAccess, pool: str, node_ids: Iterable[str]
                    ) -> dict[str, Heartbeat | None]:
    """One round of HeartbeatReader over a connection of its own, closed afterwards."""
    reader = HeartbeatReader(access, pool)
    try:
        return reader.read(node_ids)
    finally:
        reader.close()


def _read_objects(cluster: Any, pool: str, node_ids: list[str]) -> dict[str, Heartbeat | None]:
    """Every node's heartbeat object, READ_WINDOW reads in flight at once: a round costs
    about one round trip per window, not one per node. rados.Error on any read failing
    otherwise than by a missing object (then nothing of the round is judged)."""
    import rados

    found: dict[str, Heartbeat | None] = {}
    data: dict[str, bytes] = {}  # filled by librados's callbacks, one per read
    with cluster.open_ioctx(pool) as ioctx:
        ioctx.set_namespace(STORAGE_HEARTBEAT_NAMESPACE)
        for start in range(0, len(node_ids), READ_WINDOW):
            pending = [(node_id, ioctx.aio_read(
                storage_heartbeat_object(node_id), 4096, 0,
                lambda _c, read, n=node_id: data.__setitem__(n, read)))
                for node_id in node_ids[start:start + READ_WINDOW]]
            for node_id, completion in pending:
                completion.wait_for_complete_and_cb()
                ret = completion.get_return_value()
                if ret == -errno.ENOENT:
                    found[node_id] = None
                elif ret < 0:
                    raise rados.Error(f"reading the heartbeat of node {node_id}: "
                                      f"{os.strerror(-ret)}", errno=-ret)
                else:
                    found[node_id] = _parse(data.get(node_id, b""))
    return found


def _parse(raw: bytes) -> Heartbeat | None:
    try:
        body = json.loads(raw)
        return Heartbeat(seq=int(body["seq"]), sent_at=str(body.get("sent_at") or "") or None)
    except (ValueError, KeyError, TypeError):
        return None  # not ours or torn: counts as no heartbeat


@dataclass(frozen=True)
class HeartbeatView:
    """What the controller concludes about one node's storage heartbeat."""

    seq: int | None  # None: never seen
    changed_at: datetime  # when the controller last saw the sequence change (or began)
    stale: bool  # unchanged for storage_down_after_s by the controller's clock

    def describe(self, now: datetime) -> str:
        """For people: "3 s ago" or "stale since 2026-12-02T12:00:00Z"."""
        if self.stale:
            return f"stale since {self.changed_at.isoformat(timespec='seconds')}"
        return f"{max(0, int((now - self.changed_at).total_seconds()))} s ago"


class HeartbeatJudge:
    """Turns successive reads into views: a heartbeat is stale once its sequence number
    has not changed for `down_after_s`, measured from the first time this controller saw
    it (a restarted controller waits that long again before it calls one stale)."""

    def __init__(self, down_after_s: float, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.down_after_s = down_after_s
        self._clock = clock
        self._wall = wall
        self._seen: dict[str, tuple[int | None, float, datetime]] = {}

    def observe(self, node_id: str, beat: Heartbeat | None) -> HeartbeatView:
        now, wall = self._clock(), self._wall()
        seq = beat.seq if beat is not None else None
        last = self._seen.get(node_id)
        if last is None or last[0] != seq:
            last = (seq, now, wall)
            self._seen[node_id] = last
        stale = now - last[1] >= self.down_after_s
        return HeartbeatView(seq=seq, changed_at=last[2], stale=stale)

    def forget(self, node_id: str) -> None:
        self._seen.pop(node_id, None)


# -- fencing -----------------------------------------------------------------------------

@dataclass(frozen=True)
class BlocklistEntry:
    addr: str  # "ip:port/nonce"; port 0 and nonce 0 stand for every client of the IP
    until: str  # as Ceph shows it


def whole_ip(ip: str) -> str:
    """The blocklist address that fences every Ceph client of `ip` ("10.0.0.11:0/0")."""
    parsed = ipaddress.ip_address(ip)  # ValueError for anything else
    host = f"[{parsed}]" if parsed.version == 6 else str(parsed)
    return f"{host}:0/0"


class Fencer:
    """Blocklists and unblocklists Ceph clients as the fence user (`access`)."""

    def __init__(self, access: CephAccess) -> None:
        if access.user != FENCE_USER:
            log.warning("fencing as client.%s, not client.%s", access.user, FENCE_USER)
        self.access = access

    def add(self, addr: str, expire_s: float = FENCE_EXPIRE_S) -> BlocklistEntry:
        """Blocklist `addr` for `expire_s` seconds, wait until this client has the osdmap
        that holds it, and confirm it is listed. Adding a listed address again renews its
        expiry (idempotent). CephHaError when refused or not confirmed."""
        return off_loop(self._add, addr, expire_s)

    def _add(self, addr: str, expire_s: float) -> BlocklistEntry:
        with connected(self.access) as cluster, _errors(f"blocklisting {addr}"):
            mon_command(cluster, "osd blocklist", blocklistop="add", addr=addr,
                        expire=float(expire_s))
            cluster.wait_for_latest_osdmap()
            for entry in blocklist_entries(cluster):
                if entry.addr == addr:
                    log.warning("blocklisted Ceph client %s until %s", addr, entry.until)
                    return entry
        raise CephHaError(f"blocklisted {addr}, but `osd blocklist ls` does not list it")

    def listed(self) -> list[BlocklistEntry]:
        """Every entry of the cluster's blocklist."""
        return off_loop(self._listed)

    def _listed(self) -> list[BlocklistEntry]:
        with connected(self.access) as cluster, _errors("listing the blocklist"):
            return blocklist_entries(cluster)

    def remove(self, addr: str) -> bool:
        """Lift the entry of `addr`; whether there was one (removing none is a no-op)."""
        return off_loop(self._remove, addr)

    def _remove(self, addr: str) -> bool:
        with connected(self.access) as cluster, _errors(f"lifting the blocklist entry {addr}"):
            if not any(e.addr == addr for e in blocklist_entries(cluster)):
                return False
            mon_command(cluster, "osd blocklist", blocklistop="rm", addr=addr)
            cluster.wait_for_latest_osdmap()
            if any(e.addr == addr for e in blocklist_entries(cluster)):
                raise CephHaError(f"removed {addr} from the blocklist, but it is still listed")
        log.warning("lifted the Ceph blocklist entry of %s", addr)
        return True


@contextmanager
def _errors(what: str) -> Iterator[None]:
    """librados errors in the block as CephHaError naming `what`."""
    import rados

    try:
        yield
    except rados.Error as e:
        raise CephHaError(f"{what}: {e}") from e


def blocklist_entries(cluster: Any) -> list[BlocklistEntry]:
    """The blocklist. Ceph 16.2.15 answers `osd blocklist ls` with two JSON arrays one after
    the other (address entries, then range entries): both are read."""
    ret, out, err = cluster.mon_command(json.dumps({"prefix": "osd blocklist ls",
                                                    "format": "json"}), b"")
    if ret != 0:
        raise CephHaError(f"ceph osd blocklist ls failed ({ret}): {err}")
    text, entries, pos = out.decode() if isinstance(out, bytes) else out, [], 0
    decoder = json.JSONDecoder()
    while pos < len(text.strip()):
        value, pos = decoder.raw_decode(text, pos)
        entries += value if isinstance(value, list) else []
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return [BlocklistEntry(addr=str(e.get("addr", e.get("range", ""))),
                           until=str(e.get("until", ""))) for e in entries]


def expiry(entry: BlocklistEntry) -> datetime | None:
    """When an entry expires, if Ceph's text parses ("2026-12-09T12:00:00.123456+0000")."""
    try:
        return datetime.strptime(entry.until, "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        return None

