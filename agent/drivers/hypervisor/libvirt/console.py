"""A running domain's consoles: its VNC server on the node's loopback, its serial port live.

VNC: QEMU listens on 127.0.0.1 at the port the live domain XML names (autoport).
Serial: the first serial port is a pty with a log file (config.py), so libvirt's console
stream reaches it while virtlogd keeps writing the log; each stream has a connection of
its own, so a recv waiting for the guest holds up none of the driver's calls.
"""

from __future__ import annotations

import os
import socket
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt

from agent.drivers.hypervisor.base import ConsoleStream, HypervisorError
from agent.protocol import LOG_TAIL_BYTES

CONNECT_TIMEOUT_S = 10.0


def vnc_port(live_xml: str) -> int | None:
    """The VNC port of a running domain, from its live XML; None without one."""
    graphics = ET.fromstring(live_xml).find("devices/graphics[@type='vnc']")
    if graphics is None:
        return None
    try:
        port = int(graphics.get("port", "-1"))
    except ValueError:
        return None
    return port if port > 0 else None


class SocketConsole:
    """A console reached through a TCP socket (QEMU's VNC server)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def recv(self, size: int) -> bytes:
        return self._sock.recv(size)

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


def open_vnc(live_xml: str, name: str) -> SocketConsole:
    port = vnc_port(live_xml)
    if port is None:
        raise HypervisorError(f"VM {name} has no VNC display")
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT_S)
    except OSError as e:
        raise HypervisorError(f"VM {name}: its VNC server on 127.0.0.1:{port} does not "
                              f"answer: {e}") from e
    sock.settimeout(None)
    return SocketConsole(sock)


class SerialConsole:
    """The domain's serial console through a libvirt stream of its own connection."""

    def __init__(self, conn: libvirt.virConnect, stream: libvirt.virStream) -> None:
        self._conn, self._stream = conn, stream
        self._closed = False

    def recv(self, size: int) -> bytes:
        if self._closed:
            return b""
        try:
            data = self._stream.recv(size)
        except libvirt.libvirtError as e:
            if self._closed:
                return b""
            raise OSError(f"serial console: {e}") from e
        if isinstance(data, int):  # -2: would block (a non-blocking stream only)
            raise OSError("serial console: the stream would block")
        return bytes(data)

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self._stream.send(bytes(view))
            except libvirt.libvirtError as e:
                raise OSError(f"serial console: {e}") from e
            if sent < 0:
                raise OSError("serial console: the stream would block")
            view = view[sent:]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._stream.abort()
        except libvirt.libvirtError:
            pass  # ended already (the VM stopped, or another console took over)
        try:
            self._conn.close()
        except libvirt.libvirtError:
            pass


def open_serial(uri: str, vm_id: str, name: str) -> SerialConsole:
    """The serial console of running domain `vm_id`, taken over from any other session."""
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise HypervisorError(f"cannot connect to {uri}: {e}", retryable=True) from e
    try:
        dom = conn.lookupByUUIDString(vm_id)
        stream = conn.newStream(0)
        dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
    except libvirt.libvirtError as e:
        conn.close()
        raise HypervisorError(f"VM {name}: its serial console cannot be opened: "
                              f"{e.get_error_message()}") from e
    return SerialConsole(conn, stream)


class LogTail:
    """The last LOG_TAIL_BYTES of a serial log, as a console that ends after them; what is
    typed into it is dropped (a log is read only)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def recv(self, size: int) -> bytes:
        chunk, self._data = self._data[:size], self._data[size:]
        return chunk

    def sendall(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self._data = b""


def open_log(path: Path, name: str) -> ConsoleStream:
    """The tail of VM `name`'s serial log at `path` (read whole here: at most
    LOG_TAIL_BYTES); HypervisorError in words when there is none."""
    if not path.name:
        raise HypervisorError(f"VM {name} has no serial log on this node")
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - LOG_TAIL_BYTES))
            return LogTail(f.read(LOG_TAIL_BYTES))
    except FileNotFoundError:
        raise HypervisorError(f"VM {name} has written no serial log yet ({path} does not "
                              "exist on this node)") from None
    except OSError as e:
        raise HypervisorError(f"the serial log of VM {name} cannot be read: {e}") from e


def open_console(uri: str, vm_id: str, name: str, live_xml: str, kind: str) -> ConsoleStream:
    if kind == "vnc":
        return open_vnc(live_xml, name)
    if kind == "serial":
        return open_serial(uri, vm_id, name)
    raise HypervisorError(f"unknown console kind {kind!r}")
