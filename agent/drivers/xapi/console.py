"""A pool VM's graphical console: xapi's `CONNECT /console` tunnel, pinned per host.

A running VM's console records (`VM.get_consoles`) name, for the rfb one, a `location`
on the host the VM runs on (`https://<host address>/console?uuid=…`): consoles go to
members, not only the master. The client opens TLS to that host, checks the certificate
against **that host's** pin, sends `CONNECT <path?query> HTTP/1.0` with the session in a
Cookie header, and after `200` the socket carries RFB both ways.
"""

from __future__ import annotations

import contextlib
import socket
import urllib.parse
from typing import Any

from agent.drivers.hypervisor.base import HypervisorError
from agent.drivers.xapi.errors import XapiError
from agent.drivers.xapi.events import PoolCache
from agent.drivers.xapi.pool import PoolClient
from agent.drivers.xapi.transport import read_head, session_cookie


class TlsConsole:
    """A console tunnelled through a TLS socket (a ConsoleStream); `pending` holds the
    bytes that arrived with the tunnel's answer."""

    def __init__(self, sock: socket.socket, pending: bytes = b"") -> None:
        self._sock, self._pending = sock, pending

    def recv(self, size: int) -> bytes:
        if self._pending:
            data, self._pending = self._pending[:size], self._pending[size:]
            return data
        return self._sock.recv(size)

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)

    def close(self) -> None:
        # the plain socket's shutdown wakes a recv waiting in another thread without
        # touching the TLS state that recv is using
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
        self._sock.close()


def _rfb_location(client: PoolClient, vm_uuid: str, cache: PoolCache | None) -> str:
    """The location of VM `vm_uuid`'s rfb console; HypervisorError when it has none."""
    try:
        vm = client.call("VM.get_by_uuid", vm_uuid)
        record: dict[str, Any] | None = cache.get("VM", vm_uuid) if cache is not None else None
        if record is None:
            record = client.call("VM.get_record", vm)
        if record.get("power_state") != "Running":
            raise HypervisorError(f"VM {vm_uuid} is {record.get('power_state')}: a console "
                                  "needs it Running")
        for console in client.call("VM.get_consoles", vm):
            found = client.call("console.get_record", console)
            if found.get("protocol") == "rfb" and found.get("location"):
                return str(found["location"])
    except XapiError as e:
        if e.code == "UUID_INVALID":
            raise HypervisorError(f"pool {client.label}: no VM {vm_uuid}") from e
        raise
    raise HypervisorError(f"pool {client.label}: VM {vm_uuid} has no graphical (rfb) console")


def open_console(client: PoolClient, vm_uuid: str, cache: PoolCache | None = None,
                 timeout: float | None = None) -> TlsConsole:
    """The rfb console of running VM `vm_uuid`, tunnelled from the host its location
    names; the tunnel's bytes are RFB from the first one.

    Raises HypervisorError in words when the VM has no console, its host is not pinned
    or refuses the tunnel; CertificateMismatch (nothing sent) when the host shows
    another certificate; XapiError/PoolUnreachable as calls do. On failure no socket is
    left open.
    """
    location = _rfb_location(client, vm_uuid, cache)
    url = urllib.parse.urlsplit(location)
    host = url.hostname or ""
    if host not in client.pins:
        raise HypervisorError(f"pool {client.label}: the console of VM {vm_uuid} is on host "
                              f"{host}, whose certificate is not pinned: refused")
    port = url.port or client.port
    target = url.path + (f"?{url.query}" if url.query else "")
    try:
        connection = client.connect_pinned(host, port, timeout)
    except OSError as e:
        raise HypervisorError(f"pool {client.label}: host {host}:{port} unreachable for the "
                              f"console of VM {vm_uuid}: {e}", retryable=True) from e
    sock = connection.sock
    try:
        request = (f"CONNECT {target} HTTP/1.0\r\nHost: {host}\r\n"
                   f"Cookie: {session_cookie(client.session_id())}\r\n\r\n")
        sock.sendall(request.encode("latin-1"))
        status, reason, pending = read_head(sock)
        if status != 200:
            raise HypervisorError(f"pool {client.label}: host {host} refused the console of VM "
                                  f"{vm_uuid}: HTTP {status} {reason}".rstrip())
        sock.settimeout(None)  # a console waits on its user as long as it stays open
        console, sock = TlsConsole(sock, pending), None
        return console
    except OSError as e:
        raise HypervisorError(f"pool {client.label}: the console tunnel to {host} broke: {e}",
                              retryable=True) from e
    finally:
        if sock is not None:
            connection.close()
