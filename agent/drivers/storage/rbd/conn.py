"""One librados connection per driver: opened lazily, replaced after connection errors,
bounded in time, and every librados/librbd error turned into a StorageError.

The cephx key is handed to librados in memory (its `key` option): no keyring file,
no log file, no admin socket; nothing of the connection is written to the node's disk.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from agent.drivers.storage.base import StorageError

log = logging.getLogger(__name__)

# errnos after which trying again may help
RETRYABLE = frozenset({errno.ETIMEDOUT, errno.ESHUTDOWN, errno.ENOTCONN, errno.ECONNREFUSED,
                       errno.ECONNRESET, errno.EAGAIN, errno.EINTR, errno.EBUSY})
# errnos after which the connection itself is suspect and is replaced
BROKEN = frozenset({errno.ETIMEDOUT, errno.ESHUTDOWN, errno.ENOTCONN, errno.ECONNREFUSED,
                    errno.ECONNRESET})


def bindings() -> tuple[ModuleType, ModuleType]:
    """The `rados` and `rbd` modules (Debian's python3-rados, python3-rbd)."""
    try:
        import rados
        import rbd
    except ImportError as e:
        raise StorageError(f"Ceph bindings missing ({e}): apt-get install python3-rados "
                           "python3-rbd") from e
    return rados, rbd


def error_errno(e: BaseException) -> int | None:
    """The errno of a librados/librbd exception (they carry it positive), if any."""
    code = getattr(e, "errno", None)
    return abs(code) if isinstance(code, int) else None


class _Handle:
    """A `rados.Rados` and how many operations use it right now."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.users = 0
        self.retired = False


class CephConnection:
    """librados as `client.<user>` to the monitors of `mon_host`, shared by threads."""

    def __init__(self, *, user: str, key: str, mon_host: str, connect_timeout: float,
                 op_timeout: float) -> None:
        self.user = user
        self.mon_host = mon_host
        self._key = key
        self._connect_timeout = connect_timeout
        self._op_timeout = op_timeout
        self._lock = threading.Lock()
        self._handle: _Handle | None = None

    def _options(self) -> dict[str, str]:
        connect = str(max(1, round(self._connect_timeout)))
        op = str(max(1, round(self._op_timeout)))
        return {
            "mon_host": self.mon_host,
            "key": self._key,  # in memory only
            "keyring": "",  # never read a keyring file of the node
            "log_file": "",
            "log_to_stderr": "false",
            "err_to_stderr": "false",
            "admin_socket": "",
            "client_mount_timeout": connect,
            "rados_mon_op_timeout": op,
            "rados_osd_op_timeout": op,
            "ms_connection_idle_timeout": "60",
        }

    def _acquire(self) -> _Handle:
        rados, _ = bindings()
        with self._lock:
            if self._handle is None:
                cluster = rados.Rados(rados_id=self.user, conf=self._options())
                try:
                    cluster.connect()
                except rados.Error as e:
                    cluster.shutdown()
                    code = error_errno(e)
                    raise StorageError(
                        f"cannot connect to Ceph monitors {self.mon_host} as client.{self.user}"
                        f" within {self._connect_timeout:.0f}s: {e}",
                        retryable=code is None or code in RETRYABLE) from e
                self._handle = _Handle(cluster)
            self._handle.users += 1
            return self._handle

    def _release(self, handle: _Handle, broken: bool) -> None:
        with self._lock:
            handle.users -= 1
            if broken and not handle.retired:
                log.warning("Ceph connection to %s looks broken; reconnecting on next use",
                            self.mon_host)
                handle.retired = True
                if self._handle is handle:
                    self._handle = None
            last = handle.retired and handle.users == 0
        if last:
            handle.cluster.shutdown()

    @contextmanager
    def cluster(self, what: str) -> Iterator[Any]:
        """The connected `rados.Rados`; errors in the block become StorageError about `what`."""
        handle = self._acquire()
        state: dict[str, bool] = {}
        try:
            with translate(what, state):
                yield handle.cluster
        finally:
            self._release(handle, state.get("broken", False))

    @contextmanager
    def ioctx(self, pool: str, what: str) -> Iterator[Any]:
        """An open I/O context on `pool`, closed when the block ends."""
        with self.cluster(what) as cluster:
            rados, _ = bindings()
            try:
                ioctx = cluster.open_ioctx(pool)
            except rados.ObjectNotFound:
                raise StorageError(f"{what}: Ceph pool {pool!r} does not exist") from None
            with ioctx:
                yield ioctx

    def try_mon_command(self, what: str, prefix: str, **args: Any) -> tuple[int, Any, str]:
        """(errno, parsed JSON output or None, error text) of a monitor command.

        Only a failure to reach the cluster raises (StorageError); a refused command
        returns its positive errno.
        """
        with self.cluster(what) as cluster:
            cmd = json.dumps({"prefix": prefix, "format": "json", **args})
            ret, out, err = cluster.mon_command(cmd, b"")
        if ret != 0:
            return abs(ret), None, err or errno.errorcode.get(abs(ret), "")
        return 0, json.loads(out) if out.strip() else None, ""

    def mon_command(self, what: str, prefix: str, **args: Any) -> Any:
        """A monitor command's parsed JSON output; StorageError if it fails."""
        code, out, err = self.try_mon_command(what, prefix, **args)
        if code:
            raise StorageError(f"{what}: ceph {prefix} failed: {err}",
                               retryable=code in RETRYABLE)
        return out

    @contextmanager
    def key_pipe(self) -> Iterator[int]:
        """The read end of a pipe holding the key (base64), for a child process to read.

        The key never touches a file; the descriptor is closed when the block ends.
        """
        r, w = os.pipe()
        try:
            os.write(w, self._key.encode())  # a few dozen bytes: never blocks
        finally:
            os.close(w)
        try:
            yield r
        finally:
            os.close(r)

    def close(self) -> None:
        """Shut the connection down once no operation uses it; the next use reconnects."""
        with self._lock:
            handle, self._handle = self._handle, None
            if handle is None:
                return
            handle.retired = True
            last = handle.users == 0
        if last:
            handle.cluster.shutdown()


@contextmanager
def translate(what: str, state: dict[str, bool] | None = None) -> Iterator[None]:
    """Turn librados/librbd exceptions into StorageError naming `what`.

    `state` gets "broken": True when the error says the connection is unusable.
    """
    rados, rbd = bindings()
    state = {} if state is None else state
    try:
        yield
    except (rados.Error, rbd.Error) as e:
        code = error_errno(e)
        state["broken"] = code in BROKEN
        reason = str(e) or type(e).__name__
        if code == errno.EACCES or code == errno.EPERM:
            reason += " (the client's cephx caps do not allow it)"
        raise StorageError(f"{what}: {reason}",
                           retryable=code is not None and code in RETRYABLE) from e
