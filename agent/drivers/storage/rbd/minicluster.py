"""A real single-node Ceph cluster in one directory: mon, mgr and one bluestore OSD on a
sparse file, cephx on, listening on one address only (127.0.0.1 unless told), started
without systemd.

For tests, benchmarks and a one-machine lab; not a production deployment (size-1 pools).

    info = MiniCluster(Path("/var/tmp/ceph")).start(pools=["vauban"])
    ...
    MiniCluster(Path("/var/tmp/ceph")).stop()

or `python -m agent.drivers.storage.rbd.minicluster start|stop|status --dir DIR [--pool P]`.

Layout of the directory (everything of the cluster is in it):
    ceph.conf                  configuration; names no key and no client keyring
    ceph.client.admin.keyring  the admin key (tests and operators only), 0600
    ceph.client.vauban.keyring the limited client's key, for the controller, 0600
    ceph.client.vauban-fence.keyring  the fence client's key (ensure_fence_client), 0600
    cluster.json               the ClusterInfo, 0600 (it holds the client's key)
    mon.a/ mgr.x/ osd.0/       daemon data and keyrings; osd.0/block.img is the sparse device
    run/<name>.pid             PID of each daemon (written by the daemon at start)
    run/<name>.<pid>.asok      admin sockets, one per process
    log/                       daemon logs
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.drivers.storage.rbd import cephx
from agent.drivers.storage.rbd.clusterconf import (
    FENCE_CLIENT,
    ClusterInfo,
    client_caps,
    conf_text,
    fence_caps,
    free_ports,
    health_problems,
)
from agent.revert import Reverter

log = logging.getLogger(__name__)

CLIENT = "vauban"
DAEMONS = ("osd.0", "mgr.x", "mon.a")  # the order they are stopped in (FIELD-NOTES)
OSD_FILE_BYTES = 20 * 1024**3  # sparse: only what is written takes space
PG_NUM = 8
START_TIMEOUT = 120.0
STOP_TIMEOUT = 20.0
POLL = 0.2


class MiniClusterError(Exception):
    """Starting or stopping the cluster failed; the message says where to look."""


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie left to PID 1 counts as dead)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return fields[0] not in ("Z", "X")


class MiniCluster:
    """One cluster living in `directory`; the object holds no state of its own.

    Its daemons listen on `address` only: loopback, or an address of this machine that
    other machines reach (a node lab's bridge). It is chosen at bootstrap; a cluster
    started again keeps the one its ceph.conf names."""

    def __init__(self, directory: Path | str, *, start_timeout: float = START_TIMEOUT,
                 address: str = "127.0.0.1") -> None:
        self.dir = Path(directory).resolve()
        self.address = address
        self.conf = self.dir / "ceph.conf"
        self.admin_keyring = self.dir / "ceph.client.admin.keyring"
        self.client_keyring = self.dir / f"ceph.client.{CLIENT}.keyring"
        self.fence_keyring = self.dir / f"ceph.client.{FENCE_CLIENT}.keyring"
        self.info_file = self.dir / "cluster.json"
        self.start_timeout = start_timeout

    # --- processes -------------------------------------------------------------------

    def pid_file(self, name: str) -> Path:
        """Where the PID of daemon `name` ("mon.a", "mgr.x", "osd.0") is recorded."""
        return self.dir / "run" / f"{name}.pid"

    def pids(self) -> dict[str, int]:
        """The daemons of this cluster that are alive, by name (e.g. "osd.0": 1234)."""
        found = {}
        for name in DAEMONS:
            try:
                pid = int(self.pid_file(name).read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except (FileNotFoundError, ValueError):
                continue
            # A stale file may name a PID reused since: it must be our daemon on our conf.
            if str(self.conf).encode() in cmdline and pid_alive(pid):
                found[name] = pid
        return found

    def _spawn(self, name: str) -> int:
        """Start a daemon in the foreground of a new session, not waiting for it.

        Its PID is written to run/<name>.pid before this returns. It is a child of this
        process (so that `stop` from this process reaps it), but never waited on here.
        """
        kind, ident = name.split(".")
        argv = [f"ceph-{kind}", "-f", "-i", ident, "-c", str(self.conf)]
        out = str(self.dir / "log" / f"{name}.out")
        try:
            pid = os.posix_spawnp(argv[0], argv, dict(os.environ), setsid=True, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ])
        except OSError as e:
            raise MiniClusterError(f"cannot start {argv[0]}: {e}") from e
        self.pid_file(name).write_text(f"{pid}\n")
        log.info("started %s, pid %d", name, pid)
        return pid

    def _log_tail(self, name: str, lines: int = 8) -> str:
        tail: list[str] = []
        for f in (self.dir / "log" / f"{name}.out", self.dir / "log" / f"{name}.log"):
            try:
                tail += f.read_text(errors="replace").splitlines()[-lines:]
            except FileNotFoundError:
                pass
        return ("; last log lines: " + " | ".join(tail)) if tail else ""

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the daemons by their recorded PIDs, osd then mgr then mon, waiting for each.

        Afterwards no daemon of this cluster runs (SIGKILL after `timeout` seconds for a
        daemon that ignores SIGTERM); those that are children of this process are reaped.
        Stopping a stopped cluster is a no-op. The data stays.
        """
        self._stop(DAEMONS, timeout)

    def _stop(self, names: tuple[str, ...] | list[str], timeout: float = STOP_TIMEOUT) -> None:
        pids = self.pids()
        for name in DAEMONS:
            if name not in names:
                continue
            pid = pids.get(name)
            if pid is not None:
                _terminate(pid, timeout)
                log.info("stopped %s, pid %d", name, pid)
                for sock in (self.dir / "run").glob(f"{name}.{pid}.asok"):
                    sock.unlink(missing_ok=True)
            self.pid_file(name).unlink(missing_ok=True)

    def _check_running(self, names: tuple[str, ...] = DAEMONS) -> None:
        """Raise with the daemon's last log lines if one of `names` is not running."""
        running = self.pids()
        for name in names:
            if name not in running:
                raise MiniClusterError(f"{name} is not running{self._log_tail(name)}")

    # --- start -----------------------------------------------------------------------

    def start(self, pools: list[str] | tuple[str, ...] = ()) -> ClusterInfo:
        """Make the cluster run and be healthy with `pools` (RBD-initialised, size 1).

        A new directory is bootstrapped; an existing cluster has its stopped daemons
        started; a running one is only checked. Pools not yet there are created and the
        client's caps extended to them. After success every PG is active+clean, the mgr
        is available and the OSD up and in; the returned info is also in cluster.json.
        On failure the daemons this call started are stopped (and a fresh bootstrap's
        files removed, the logs kept), and MiniClusterError says why.
        """
        t0 = time.monotonic()
        deadline = t0 + self.start_timeout
        fresh = not self.info_file.exists()
        with Reverter() as revert:
            if fresh:
                revert.add(self._remove_bootstrap, "remove bootstrap files")
                revert.add(self.stop, "stop daemons")
                info = self._bootstrap()
            else:
                info = self.info()
                missing = [n for n in reversed(DAEMONS) if n not in self.pids()]
                revert.add(lambda: self._stop(missing), f"stop {missing}")
                for name in missing:
                    self._spawn(name)
            with self.admin(deadline) as admin:
                if fresh:
                    _mon_command(admin, prefix="config set", who="mgr", force=True,
                                 name="mgr/devicehealth/enable_monitoring", value="false")
                    self._spawn("mgr.x")
                    self._add_osd(admin)
                all_pools = tuple(dict.fromkeys([*info.pools, *pools]))
                _ensure_pools(admin, all_pools)
                key = _ensure_client(admin, info.client, all_pools)
                # what a controller is given: ceph.conf and the limited client's keyring
                _write_private(self.client_keyring,
                               cephx.keyring({f"client.{info.client}": key}))
                info = ClusterInfo(info.fsid, info.mon_host, info.conf, info.client, key,
                                   info.admin_keyring, all_pools)
                _write_private(self.info_file, info.to_json())
                self._wait_healthy(admin, deadline)
            revert.success()
        log.info("cluster in %s healthy after %.1fs", self.dir, time.monotonic() - t0)
        return info

    def ensure_fence_client(self) -> Path:
        """client.vauban-fence on the running cluster with exactly `fence_caps()`, and its
        keyring (0600) in the cluster's folder, for a controller to fence nodes with;
        returns the keyring's path. Idempotent: the key stays, the caps are set again."""
        with self.admin() as admin:
            key = _ensure_entity(admin, f"client.{FENCE_CLIENT}", fence_caps())
        _write_private(self.fence_keyring, cephx.keyring({f"client.{FENCE_CLIENT}": key}))
        return self.fence_keyring

    def info(self) -> ClusterInfo:
        """The info of a bootstrapped cluster (running or not); MiniClusterError if none."""
        try:
            return ClusterInfo.from_json(self.info_file.read_text())
        except FileNotFoundError:
            raise MiniClusterError(f"no cluster in {self.dir}") from None

    @contextmanager
    def admin(self, deadline: float | None = None) -> Iterator[Any]:
        """A connected `rados.Rados` as client.admin, shut down when the block ends.

        Its connection and every operation time out at `deadline` (default: in 30 s).
        """
        import rados

        left = max(1, int((deadline or time.monotonic() + 30) - time.monotonic()))
        conn = rados.Rados(conffile=str(self.conf), rados_id="admin",
                           conf={"keyring": str(self.admin_keyring),
                                 "client_mount_timeout": str(left),
                                 "rados_mon_op_timeout": str(left),
                                 "rados_osd_op_timeout": str(left)})
        try:
            try:
                conn.connect()
            except rados.Error as e:
                raise MiniClusterError(f"cannot connect to the cluster in {self.dir}: {e}"
                                       f"{self._log_tail('mon.a')}") from e
            yield conn
        finally:
            conn.shutdown()

    def _bootstrap(self) -> ClusterInfo:
        """Keys, config, monmap, mon mkfs and start; the mgr and OSD come after."""
        for sub in ("run", "log", "mgr.x", "osd.0"):  # mon.a: made by its mkfs
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.dir.chmod(self.dir.stat().st_mode | 0o711)
        fsid = str(uuid.uuid4())
        v2, v1 = free_ports(2, self.address)
        mon_host = f"[v2:{self.address}:{v2},v1:{self.address}:{v1}]"
        self.conf.write_text(conf_text(self.dir, fsid, mon_host, self.address))
        keys = {"mon.": cephx.new_key(), "client.admin": cephx.new_key(),
                "mgr.x": cephx.new_key(), "osd.0": cephx.new_key()}
        caps = {"mon.": {"mon": "allow *"},
                "client.admin": {"mon": "allow *", "osd": "allow *", "mgr": "allow *",
                                 "mds": "allow *"},
                "mgr.x": {"mon": "allow profile mgr", "osd": "allow *", "mds": "allow *"},
                "osd.0": {"mon": "allow profile osd", "mgr": "allow profile osd",
                          "osd": "allow *"}}
        # This keyring seeds the mon's auth database with every entity in it.
        seed = self.dir / "bootstrap.keyring"
        _write_private(seed, cephx.keyring(keys, caps))
        _write_private(self.admin_keyring, cephx.keyring({"client.admin": keys["client.admin"]}))
        for name in ("mgr.x", "osd.0"):
            _write_private(self.dir / name / "keyring", cephx.keyring({name: keys[name]}))
        monmap = self.dir / "monmap"
        _run(["monmaptool", "--create", "--fsid", fsid, "--addv", "a", mon_host, str(monmap)])
        _run(["ceph-mon", "--mkfs", "-i", "a", "-c", str(self.conf), "--monmap", str(monmap),
              "--keyring", str(seed)])
        monmap.unlink()
        seed.unlink()
        self._spawn("mon.a")
        info = ClusterInfo(fsid=fsid, mon_host=mon_host, conf=self.conf, client=CLIENT, key="",
                           admin_keyring=self.admin_keyring, pools=())
        _write_private(self.info_file, info.to_json())
        return info

    def _add_osd(self, admin: Any) -> None:
        osd_uuid = str(uuid.uuid4())
        _mon_command(admin, prefix="osd new", uuid=osd_uuid, id=0)
        with (self.dir / "osd.0" / "block.img").open("wb") as f:
            f.truncate(OSD_FILE_BYTES)
        _run(["ceph-osd", "--mkfs", "-i", "0", "-c", str(self.conf), "--osd-uuid", osd_uuid])
        self._spawn("osd.0")

    def _wait_healthy(self, admin: Any, deadline: float) -> None:
        """Poll until every PG is active+clean, the mgr available and the OSD up and in."""
        while True:
            self._check_running()
            pools = _mon_command(admin, prefix="osd pool ls", detail="detail")
            expected = sum(int(p["pg_num"]) for p in pools)
            problems = health_problems(_mon_command(admin, prefix="status"), expected)
            if not problems:
                return
            if time.monotonic() > deadline:
                raise MiniClusterError("cluster not healthy in time: " + "; ".join(problems))
            time.sleep(POLL)

    def _remove_bootstrap(self) -> None:
        """Undo a failed bootstrap: everything but the logs, for the post-mortem."""
        for sub in ("mon.a", "mgr.x", "osd.0", "run"):
            shutil.rmtree(self.dir / sub, ignore_errors=True)
        for f in (self.conf, self.admin_keyring, self.client_keyring, self.fence_keyring,
                  self.info_file,
                  self.dir / "monmap",
                  self.dir / "bootstrap.keyring"):
            f.unlink(missing_ok=True)

    def status(self) -> dict[str, Any]:
        """What runs and, if the mon answers, the cluster's health; for the CLI."""
        out: dict[str, Any] = {"dir": str(self.dir), "pids": self.pids()}
        if "mon.a" in out["pids"]:
            with self.admin() as admin:
                st = _mon_command(admin, prefix="status")
            out.update(health=st["health"]["status"], pgs=st["pgmap"].get("pgs_by_state", []))
        return out


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM `pid`, wait for it to end (SIGKILL at the deadline), reap it if our child."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            log.warning("pid %d ignored SIGTERM for %.0fs, killing it", pid, timeout)
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10.0
        time.sleep(0.05)
    try:
        os.waitpid(pid, 0)  # a zombie child of ours: gone for good only once reaped
    except ChildProcessError:
        pass  # not our child (started by another process): its parent or init reaps it


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise MiniClusterError(f"{' '.join(argv)} failed ({proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()[-2000:]}")


def _write_private(path: Path, text: str) -> None:
    """Write `text` to a file only root can read (created 0600, never world-readable)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def _mon_command(conn: Any, **cmd: Any) -> Any:
    """Run a mon command as JSON and return its parsed JSON output (None when empty)."""
    ret, out, err = conn.mon_command(json.dumps({**cmd, "format": "json"}), b"", timeout=30)
    if ret != 0:
        raise MiniClusterError(f"ceph {cmd['prefix']} failed ({ret}): {err}")
    return json.loads(out) if out.strip() else None


def _ensure_pools(admin: Any, pools: tuple[str, ...]) -> None:
    """Size-1 pools with the rbd application, initialised for RBD; existing ones are kept."""
    import rbd

    existing = _mon_command(admin, prefix="osd pool ls")
    new = [p for p in pools if p not in existing]
    for pool in new:  # all created first, so that their PGs peer together
        _mon_command(admin, prefix="osd pool create", pool=pool, pg_num=PG_NUM, pgp_num=PG_NUM)
        _mon_command(admin, prefix="osd pool application enable", pool=pool, app="rbd")
    for pool in new:
        with admin.open_ioctx(pool) as ioctx:
            rbd.RBD().pool_init(ioctx, False)
        log.info("created pool %s", pool)


def _ensure_client(admin: Any, client: str, pools: tuple[str, ...]) -> str:
    """client.<client> with caps on exactly `pools`; returns its key."""
    return _ensure_entity(admin, f"client.{client}", client_caps(pools))


def _ensure_entity(admin: Any, entity: str, caps: dict[str, str]) -> str:
    """`entity` with exactly `caps` (made, or its caps set again); returns its key."""
    flat = [x for kv in caps.items() for x in kv]
    ret, _, _ = admin.mon_command(json.dumps({"prefix": "auth get", "entity": entity,
                                              "format": "json"}), b"", timeout=30)
    if ret == 0:
        _mon_command(admin, prefix="auth caps", entity=entity, caps=flat)
    else:
        _mon_command(admin, prefix="auth get-or-create", entity=entity, caps=flat)
    key: str = _mon_command(admin, prefix="auth get-key", entity=entity)["key"]
    return key


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.drivers.storage.rbd.minicluster",
                                description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--dir", required=True, type=Path)
    p.add_argument("--pool", action="append", default=[], help="pool to create (repeatable)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cluster = MiniCluster(args.dir)
    try:
        if args.action == "start":
            info = cluster.start(pools=args.pool)
            cluster.ensure_fence_client()  # the controller fences nodes with it
            # the key stays in the 0600 files; a terminal or a log is no place for it
            print(f"Ceph cluster {info.fsid} healthy in {args.dir}: mon_host {info.mon_host}, "
                  f"client.{info.client} keyring {cluster.client_keyring}, fence client "
                  f"keyring {cluster.fence_keyring}, "
                  f"pools {', '.join(info.pools)}")
        elif args.action == "stop":
            cluster.stop()
        else:
            print(json.dumps(cluster.status(), indent=2))
    except MiniClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
