"""VM consoles: `console` objects, `CONNECT /console?…`, and the RFB server behind them.

Read from xapi (console.ml, docs/design/xapi-plan.md §1.14): a VM's `consoles` are
records with `protocol` (rfb) and `location` (`https://<host address>/console?uuid=…`);
a client sends `CONNECT <path?query> HTTP/1.0` with its session (cookie or query) to
that host, which answers `HTTP/1.0 200 OK` and from then on relays the socket to the
VM's VNC server. The console's VM must be Running and resident on the host that
answers. What the simulator answers: no valid session **401**; no such console (`ref`
or `uuid` of a console or of a VM, whose rfb console is taken), a VM not running, or
running on another host: **404** (xapi fails these with an internal error).

Behind every console is one tiny RFB server the simulator owns (`BannerServer`, on
127.0.0.1 of the simulator's process): it sends the RFB 3.8 banner, then echoes what
it receives, until the client closes.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from typing import TYPE_CHECKING, Any

from tests.xapi_sim.http_import import Refusal, request_params, session_of
from tests.xapi_sim.model import Session, Store

if TYPE_CHECKING:
    from tests.xapi_sim.server import Member, SimPool

BANNER = b"RFB 003.008\n"
CHUNK = 64 * 1024


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.sendall(BANNER)
        while data := sock.recv(CHUNK):
            sock.sendall(data)


class BannerServer(socketserver.ThreadingTCPServer):
    """The RFB server behind every simulated console (see the module docstring)."""

    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.thread = threading.Thread(target=self.serve_forever, name="xapi-sim-rfb",
                                       daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join()


def add_console(pool: SimPool, vm_uuid: str) -> str:
    """An rfb console for VM `vm_uuid`, located on the member it is resident on (the
    master when it is resident nowhere); the console's uuid."""
    store = pool.store
    with store.cond:
        host = store.objects[("VM", vm_uuid)].fields.get("resident_on") or pool.master.host_uuid
        member = next(m for m in pool.members if m.host_uuid == host)
        console = store.add("console", {"VM": vm_uuid, "protocol": "rfb"})
        location = f"https://{member.address}:{member.port}/console?uuid={console}"
        store.modify("console", console, location=location)
        return console


def _console_of(store: Store, sess: Session, params: dict[str, str]) -> str:
    """The uuid of the console a request names (`ref`/`uuid` of a console, or of a VM:
    its rfb console); Refusal 404 when there is none."""
    name = params.get("uuid") or params.get("ref") or ""
    key = sess.keys.get(name) if "ref" in params and "uuid" not in params else None
    for cls in ("console", "VM"):
        if key is None and (cls, name) in store.objects:
            key = (cls, name)
    if key is not None and key[0] == "VM":
        key = next((("console", c.uuid) for c in store.live("console")
                    if c.fields["VM"] == key[1] and c.fields["protocol"] == "rfb"), None)
    if key is None or key[0] != "console" or key not in store.objects:
        raise Refusal(404, f"{name or 'nothing'} is neither a console nor a VM with one")
    return key[1]


def _check_here(store: Store, member: Member, console: str) -> None:
    vm = store.objects[("VM", store.objects[("console", console)].fields["VM"])].fields
    if vm["power_state"] != "Running":
        raise Refusal(404, f"the console's VM is {vm['power_state']}, not Running")
    if vm.get("resident_on") != member.host_uuid:
        raise Refusal(404, "the console's VM is not resident on this host")


def accept_connect(member: Member, path: str, headers: Any) -> str:
    """The console uuid a `CONNECT path` on `member` may open; Refusal otherwise."""
    store = member.pool.store
    url, params = request_params(path, headers.get_all("Cookie") or [])
    if url != "/console":
        raise Refusal(404, f"no handler for CONNECT {url}")
    with store.cond:
        sess = session_of(store, params)
        if sess is None:
            raise Refusal(401, "Unauthorised")
        console = _console_of(store, sess, params)
        _check_here(store, member, console)
    member.pool.transfers.append({"kind": "console", "member": member.address,
                                  "object": console})
    return console


def relay(client_in: Any, client: socket.socket, port: int) -> None:
    """Bytes both ways between the client's socket (read through `client_in`, its
    buffered reader) and the RFB server at 127.0.0.1:`port`, until either side ends."""
    with socket.create_connection(("127.0.0.1", port)) as rfb:

        def upstream() -> None:
            try:
                while data := client_in.read1(CHUNK):
                    rfb.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    rfb.shutdown(socket.SHUT_WR)  # the echo server ends, so does the relay
                except OSError:
                    pass

        pump = threading.Thread(target=upstream, name="xapi-sim-console-up", daemon=True)
        pump.start()
        try:
            while data := rfb.recv(CHUNK):
                client.sendall(data)
        except OSError:
            pass
        pump.join()

