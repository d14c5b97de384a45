"""The simulator in its own process, as tests drive it: start, control, stop by PID.

`SimProcess` starts `python -m tests.xapi_sim`, waits for its ready line (a blocking
read, no polling) and offers the pool's switches through its control socket: `store`
for objects, sessions and counters, `members[i]` for each host's listener. Inside
`with sim.batch():` changes are queued and run as one step under the pool's lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parents[2]

if TYPE_CHECKING:
    from tests.xapi_sim.backend_xl import XlBackend


class SimError(Exception):
    """The simulator refused a control request."""


class SimProcess:
    """A simulated pool running in a process of its own (see the module docstring)."""

    def __init__(self, folder: Path, hosts: int = 2, jsonrpc: bool = True,
                 stable_refs: bool = False, xl: XlBackend | None = None) -> None:
        command = [sys.executable, "-m", "tests.xapi_sim", "--folder", str(folder),
                   "--hosts", str(hosts)] + ([] if jsonrpc else ["--no-jsonrpc"]) + (
                       ["--stable-refs"] if stable_refs else [])
        if xl is not None:  # its guests run in that dom0, reached as this process does
            command += ["--xl-image", str(xl.dom0.image.folder), "--xl-port",
                        str(xl.dom0.port), "--xl-initrd", str(xl.initrd)]
        self.folder = folder
        self.stderr = open(folder / "sim.log", "w+b")  # closed in stop()
        self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                                        stderr=self.stderr)
        self._queue: list[tuple[str, list[Any]]] | None = None
        try:
            assert self.process.stdout is not None
            ready = self.process.stdout.readline()
            if not ready:
                self.process.wait()
                self.stderr.seek(0)
                raise SimError(f"the simulator did not start: {self.stderr.read().decode()}")
            self.control = json.loads(ready)["control"]
            info = self.query("info")
        except BaseException:
            self.stop()
            raise
        self.port, self.sr, self.network = info["port"], info["sr"], info["network"]
        self.template: str = info["template"]  # the VM template "Other install media"
        self.members = [Member(self, i, m) for i, m in enumerate(info["members"])]
        self.store = Store(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    def ask(self, op: str, *args: Any) -> Any:
        """Run control op `op`; its value (None while batching: the op is queued)."""
        if self._queue is not None:
            self._queue.append((op, list(args)))
            return None
        return self._send({"op": op, "args": list(args)})

    def query(self, op: str, *args: Any) -> Any:
        """A read of the simulator's state (never queued: it needs its answer now)."""
        if self._queue is not None:
            raise SimError(f"{op} reads state: not inside a batch")
        return self._send({"op": op, "args": list(args)})

    def _send(self, request: dict[str, Any]) -> Any:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(self.control)
            conn.sendall(json.dumps(request).encode() + b"\n")
            answer = json.loads(conn.makefile("rb").readline())
        if "error" in answer:
            raise SimError(answer["error"])
        return answer["value"]

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Queue the changes made inside; run them as one step when the block ends."""
        self._queue = []
        try:
            yield
            steps = self._queue
        finally:
            self._queue = None
        self._send({"op": "batch", "args": steps})

    def url(self, member: int = 0) -> str:
        return f"https://{self.members[member].address}:{self.port}/"

    @property
    def master(self) -> Member:
        return self.members[self.query("info")["master"]]

    def switch_master(self, member: int) -> None:
        self.ask("switch_master", member)

    def eject(self, member: int) -> str:
        """Member `member` leaves and masters a pool of its own; that pool's uuid."""
        return str(self.query("eject", member))

    def restart_toolstack(self) -> None:
        self.ask("restart_toolstack")

    def hold(self, method: str) -> None:
        """Tasks of `method` (e.g. "VM.start") wait until `release(method)`."""
        self.ask("hold", method)

    def release(self, method: str) -> None:
        self.ask("release", method)

    def wait_tasks(self, method: str, count: int = 1) -> None:
        """Wait until `count` tasks of `method` are pending in the simulator."""
        if not self.query("wait_tasks", method, count):
            raise SimError(f"{count} tasks of {method} never came")

    def fail_next(self, method: str, *description: str) -> None:
        """The next call or task of `method` fails with ErrorDescription `description`."""
        self.ask("fail_next", method, list(description))

    def guest_ignores_shutdown(self, flag: bool = True) -> None:
        """clean_shutdown waits until a hard_shutdown halts the VM (then it is cancelled)."""
        self.ask("guest_ignores_shutdown", flag)

    def host_memory(self, size: int) -> None:
        """Each host's total memory, in bytes."""
        self.ask("host_memory", size)
    def vdi_file(self, vdi_uuid: str) -> Path:
        """The file holding a VDI's bytes (made sparse at its size if it was not yet)."""
        return Path(self.query("vdi_file", vdi_uuid))

    def import_redirect(self, member: int | None) -> None:
        """Imports must go to member `member`: the others answer 302 (None: any)."""
        self.ask("import_redirect", member)

    @property
    def transfers(self) -> list[dict[str, str]]:
        """Imports and consoles served so far: {kind, member (address), object (uuid)}."""
        return list(self.query("transfers"))

    def add_console(self, vm_uuid: str) -> str:
        """An rfb console for a VM, on the host it is resident on; its uuid."""
        return str(self.query("add_console", vm_uuid))

    def stop(self) -> None:
        """SIGTERM to the simulator's PID, then wait for it to end."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
        self.process.wait()
        assert self.process.stdout is not None
        self.process.stdout.close()
        self.stderr.close()


class Member:
    """One host of the simulated pool."""

    def __init__(self, sim: SimProcess, index: int, info: dict[str, Any]) -> None:
        self.sim, self.index = sim, index
        self.address: str = info["address"]
        self.fingerprint: str = info["fingerprint"]
        self.host_uuid: str = info["host_uuid"]
        self.cert_pem: str = info["cert_pem"]

    @property
    def requests(self) -> int:
        """HTTP requests this host received."""
        return int(self.sim.query("requests", self.index))

    def rekey(self, expired: bool = False, names: str | None = None) -> str:
        """A new certificate for this host (`expired`: one that expired yesterday;
        `names`: naming that address, not the host's); its SHA-256."""
        self.fingerprint = str(self.sim.query("rekey", self.index, expired, names))
        self.cert_pem = self.sim.query("info")["members"][self.index]["cert_pem"]
        return self.fingerprint

    def stop(self) -> None:
        """Close this host's listener: unreachable from now on."""
        self.sim.ask("stop_member", self.index)


class Store:
    """The pool's objects, sessions and counters."""

    def __init__(self, sim: SimProcess) -> None:
        self.sim = sim

    def add(self, cls: str, fields: dict[str, Any], uuid: str | None = None) -> str:
        """Create an object (its uuid chosen here, so a batch can name it at once)."""
        oid = uuid or str(uuidlib.uuid4())
        self.sim.ask("add", cls, fields, oid)
        return oid

    def modify(self, cls: str, uuid: str, **fields: Any) -> None:
        self.sim.ask("modify", cls, uuid, fields)

    def remove(self, cls: str, uuid: str) -> None:
        self.sim.ask("remove", cls, uuid)

    def vanish(self, cls: str, uuid: str) -> None:
        """Forget an object without an event (tasks when the toolstack restarts)."""
        self.sim.ask("vanish", cls, uuid)

    def expire_sessions(self) -> None:
        self.sim.ask("expire_sessions")

    def lose_events(self) -> None:
        self.sim.ask("lose_events")

    @property
    def logins(self) -> list[tuple[str, str]]:
        """(user name, originator) of every login so far."""
        return [(u, o) for u, o in self.sim.query("logins")]

    @property
    def sessions(self) -> int:
        """How many sessions are open."""
        return int(self.sim.query("sessions"))

    @property
    def calls(self) -> dict[str, int]:
        """XAPI method -> calls answered so far."""
        return dict(self.sim.query("calls"))

    def field(self, cls: str, uuid: str, name: str) -> Any:
        """A field of an object as the simulator holds it (ints as ints)."""
        return self.sim.query("field", cls, uuid, name)

    def live(self, cls: str) -> set[str]:
        """The uuids of the live objects of `cls`."""
        return set(self.sim.query("live", cls))

    def wait_blocked(self, count: int = 1) -> None:
        """Wait until `count` event.from calls are blocked in the simulator."""
        if not self.sim.query("wait_blocked", count):
            raise SimError(f"{count} event.from calls never blocked")
