"""A simulated XCP-ng pool: one HTTPS listener per host, the same port on each address.

The first master listens on 127.0.0.1, the other members on 127.0.0.2 and up (loopback
all), because `HOST_IS_SLAVE` names an address only and clients keep the URL's port.
JSON-RPC at `/jsonrpc`, XML-RPC at every other POST path (xapi matches handlers by
longest prefix, so `/`, `/RPC2`, `/xmlrpc` all land on XML-RPC). Each host has its own
self-signed certificate; `rekey` gives it a new one (as a reinstalled or renewed host).
Answers are HTTP/1.0: one connection per request, so a client checks the certificate of
every request it sends.
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.xapi_sim import api, console, http_import, wire
from tests.xapi_sim.lifecycle import Backend, MemoryBackend
from tests.xapi_sim.model import GiB, Store


def make_certificate(address: str, folder: Path, name: str, expired: bool = False,
                     names: str | None = None) -> tuple[Path, Path, str]:
    """A self-signed cert naming `address` (or the address `names`), valid for ten
    years or expired yesterday: (cert path, key path, SHA-256 of its DER)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)])
    now = datetime.datetime.now(datetime.UTC)
    ends = now - datetime.timedelta(days=1) if expired else now + datetime.timedelta(days=3650)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=30))
            .not_valid_after(ends)
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(names or address))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, cert.fingerprint(hashes.SHA256()).hex()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Listener
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the tests read the counters, not a log

    def do_POST(self) -> None:
        with self.server.member.pool.store.cond:
            self.server.member.requests += 1
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        member = self.server.member
        jsonrpc_path = self.path.split("?", 1)[0] == "/jsonrpc"
        try:
            if jsonrpc_path and member.pool.jsonrpc:
                ctype, answer = "application/json", member.answer_jsonrpc(body)
            else:
                ctype, answer = "text/xml", member.answer_xmlrpc(body)
        except wire.BadRequest as e:
            if jsonrpc_path:  # an xapi without JSON-RPC answers there in text/xml (the
                # Content-Type clients probe for); what its body says is not known here
                self._answer("text/xml", wire.xmlrpc_failure(["MESSAGE_METHOD_UNKNOWN",
                                                              "jsonrpc"]))
                return
            self.send_error(500, explain=str(e))
            return
        self._answer(ctype, answer)

    def do_PUT(self) -> None:
        refusal = http_import.handle_put(self.server.member, self.path, self.headers,
                                         self.rfile)
        if refusal is not None:
            self._refuse(refusal)
        else:
            self._answer("text/plain", b"")

    def do_CONNECT(self) -> None:
        try:
            console.accept_connect(self.server.member, self.path, self.headers)
        except http_import.Refusal as refusal:
            self._refuse(refusal)
            return
        self.send_response(200)
        self.end_headers()
        console.relay(self.rfile, self.connection, self.server.member.pool.banner.port)

    def _refuse(self, refusal: http_import.Refusal) -> None:
        self.send_response(refusal.status, refusal.reason)
        for name, value in refusal.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _answer(self, ctype: str, answer: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


class _Listener(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, member: Member) -> None:
        self.member = member
        super().__init__((member.address, member.port), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # the TLS handshake runs in the request's thread, with the member's key of now
        try:
            tls = self.member.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        with tls:
            super().finish_request(tls, client_address)


@dataclass
class Member:
    """One host's listener and what the tests read of it."""

    pool: SimPool
    host_uuid: str
    address: str
    port: int
    context: ssl.SSLContext = field(init=False)
    fingerprint: str = ""
    cert_pem: str = ""
    requests: int = 0  # HTTP requests received (a refused certificate sends none)
    listener: _Listener | None = None
    thread: threading.Thread | None = None
    own_store: Store | None = None  # set when ejected: master of a pool of its own

    def rekey(self, expired: bool = False, names: str | None = None) -> str:
        """A new certificate for this host (new connections get it; `expired`: one that
        expired yesterday; `names`: naming that address, not the host's); its SHA-256."""
        name = f"{self.address}-{self.pool.rekeys}"
        self.pool.rekeys += 1
        cert, key, self.fingerprint = make_certificate(self.address, self.pool.folder, name,
                                                       expired, names)
        self.cert_pem = cert.read_text()
        with self.pool.store.cond:
            self.pool.store.certificates[self.host_uuid] = self.cert_pem
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.context = context
        return self.fingerprint

    def start(self) -> None:
        """Listen on (address, port) and serve in a thread of its own."""
        self.listener = _Listener(self)
        self.thread = threading.Thread(target=self.listener.serve_forever,
                                       name=f"xapi-sim-{self.address}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop listening (the address refuses connections from now on)."""
        if self.listener is not None:
            self.listener.shutdown()
            self.listener.server_close()
            assert self.thread is not None
            self.thread.join()
            self.listener = self.thread = None

    def _call(self, method: str, params: list[Any]) -> Any:
        if self.own_store is not None:
            return api.call(self.own_store, method, params, None)
        master = self.pool.master
        redirect = None if master is self else master.address
        return api.call(self.pool.store, method, params, redirect)

    def answer_xmlrpc(self, body: bytes) -> bytes:
        method, params = wire.xmlrpc_request(body)
        try:
            return wire.xmlrpc_success(self._call(method, params))
        except wire.XapiFault as fault:
            return wire.xmlrpc_failure(fault.description)

    def answer_jsonrpc(self, body: bytes) -> bytes:
        method, params, call_id, version = wire.jsonrpc_request(body)
        try:
            return wire.jsonrpc_success(self._call(method, params), call_id, version)
        except wire.XapiFault as fault:
            return wire.jsonrpc_failure(fault.description, call_id, version)


def _free_port(addresses: list[str]) -> int:
    """A TCP port free on every one of `addresses` when asked."""
    for _ in range(20):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = int(probe.getsockname()[1])
            others = [socket.socket() for _ in addresses[1:]]
            try:
                for sock, address in zip(others, addresses[1:], strict=True):
                    sock.bind((address, port))
                return port
            except OSError:
                continue
            finally:
                for sock in others:
                    sock.close()
    raise RuntimeError("no TCP port free on all the simulated hosts' addresses")


class SimPool:
    """A pool of `hosts` members with a small inventory; the first is the master."""

    def __init__(self, folder: Path, hosts: int = 2, username: str = "root",
                 password: str = "secret", jsonrpc: bool = True,
                 stable_refs: bool = False, backend: Backend | None = None) -> None:
        self.folder, self.rekeys = folder, 0
        self.jsonrpc = jsonrpc  # False: /jsonrpc answers XML-RPC (an xapi without it)
        self.store = Store(username, password, stable_refs)
        # what runs the guests: in memory unless a backend running real ones is given
        self.store.backend = backend if backend is not None else MemoryBackend()
        self.store.folder = folder
        self.import_redirect: int | None = None  # the member every import must go to
        self.transfers: list[dict[str, str]] = []  # imports and consoles served, in order
        self.banner = console.BannerServer()  # the RFB server behind every console
        addresses = [f"127.0.0.{i + 1}" for i in range(hosts)]
        self.port = _free_port(addresses)
        self.members: list[Member] = []
        for i, address in enumerate(addresses):
            metrics = self.store.add("host_metrics", {})
            uuid = self.store.add("host", {"name_label": f"xcp-{i + 1}", "address": address,
                                           "hostname": f"xcp-{i + 1}", "metrics": metrics,
                                           "memory_overhead": 64 * 1024**2})
            member = Member(self, uuid, address, self.port)
            member.rekey()
            self.members.append(member)
        self.master = self.members[0]
        self.store.console_location = self._console_location
        self.sr = self.store.add("SR", {"name_label": "Local storage", "type": "ext",
                                        "physical_size": 8 * 1024**4,
                                        "physical_utilisation": 3 * 1024**4})
        self.store.add("pool", {"name_label": "sim-pool", "master": self.master.host_uuid,
                                "default_SR": self.sr})
        self.network = self.store.add("network", {"name_label": "Pool-wide network",
                                                  "bridge": "xenbr0"})
        self.store.add("VM", {"name_label": "Control domain on xcp-1",
                              "is_control_domain": True, "power_state": "Running",
                              "resident_on": self.master.host_uuid})
        self.store.add("SM", {"name_label": "Local EXT3 VHD", "type": "ext",
                              "capabilities": ["SR_PROBE", "VDI_CREATE", "VDI_DELETE",
                                               "VDI_CLONE", "VDI_SNAPSHOT", "VDI_RESIZE"],
                              "features": {"VDI_CREATE": 1, "VDI_DELETE": 1, "VDI_CLONE": 1,
                                           "VDI_SNAPSHOT": 1, "VDI_RESIZE": 1}})
        self.template = self.store.add("VM", {
            "name_label": "Other install media", "is_a_template": True,
            "memory_static_max": GiB // 2, "memory_dynamic_max": GiB // 2,
            "memory_dynamic_min": GiB // 2, "memory_static_min": GiB // 2,
            "HVM_boot_params": {"order": "cdn"}, "platform": {"device-model": "qemu-upstream"},
            "other_config": {"default_template": "true"}})

    def _console_location(self, host_uuid: str, console_uuid: str) -> str:
        member = next((m for m in self.members if m.host_uuid == host_uuid), self.master)
        return f"https://{member.address}:{member.port}/console?uuid={console_uuid}"

    def url(self, member: int = 0) -> str:
        """The HTTPS URL of member `member`."""
        return f"https://{self.members[member].address}:{self.port}/"

    def start(self) -> None:
        self.banner.start()
        for member in self.members:
            member.start()

    def stop(self) -> None:
        self.store.expire_sessions()  # ends blocked event.from calls at once
        stoppers = [threading.Thread(target=m.stop) for m in self.members]
        for stopper in stoppers:  # side by side: each waits out its listener's poll
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        self.banner.stop()

    def eject(self, member: int) -> str:
        """Member `member` leaves the pool and becomes master of a pool of its own (same
        credentials, as an ejected host keeps them); the new pool's uuid."""
        ejected = self.members[member]
        store = Store(*self.store.credentials)
        host = store.add("host", {"name_label": "ejected", "address": ejected.address})
        new_pool = store.add("pool", {"name_label": "", "master": host})
        with self.store.cond:
            self.store.remove("host", ejected.host_uuid)
            ejected.own_store = store
        return new_pool

    def restart_toolstack(self) -> None:
        """As xapi restarting on the master: sessions end, tasks vanish without events."""
        with self.store.cond:
            for task in self.store.live("task"):
                self.store.vanish("task", task.uuid)
            self.store.expire_sessions()

    def switch_master(self, member: int) -> None:
        """Make member `member` the master: the others answer logins HOST_IS_SLAVE."""
        with self.store.cond:
            self.master = self.members[member]
            self.store.modify("pool", self.store.pool().uuid,
                              master=self.master.host_uuid)
