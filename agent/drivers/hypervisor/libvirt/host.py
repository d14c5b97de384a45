"""The connection to libvirtd: opened lazily, reopened after it dropped, errors translated.

Every libvirt error leaves this module as a HypervisorError; errors that mean
"the connection is gone" (libvirtd restarted or not running yet) are retryable
and make the next call open a fresh connection.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import libvirt

from agent.drivers.hypervisor.base import HypervisorError

T = TypeVar("T")

_CONNECTION_CODES = frozenset({
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
    libvirt.VIR_ERR_OPERATION_TIMEOUT,
    libvirt.VIR_ERR_RPC,
})
# Errors raised by the client side of the RPC layer: broken pipe, "client socket is closed".
_CONNECTION_DOMAINS = frozenset({libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE})


def is_connection_error(err: libvirt.libvirtError) -> bool:
    """Whether `err` says the connection to libvirtd is unusable (as opposed to a refused call)."""
    return (err.get_error_code() in _CONNECTION_CODES
            or err.get_error_domain() in _CONNECTION_DOMAINS)


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt's default handler prints every error to stderr; ours become exceptions."""


class Host:
    """One libvirt connection, shared by the driver's calls; safe to use from several threads."""

    def __init__(self, uri: str = "qemu:///system") -> None:
        self.uri = uri
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        libvirt.registerErrorHandler(_quiet, None)

    def connection(self) -> libvirt.virConnect:
        """An open connection, opening one if there is none or the last one dropped.

        Raises a retryable HypervisorError when libvirtd cannot be reached.
        """
        with self._lock:
            if self._conn is not None and not self._alive(self._conn):
                self._discard_locked()
            if self._conn is None:
                try:
                    self._conn = libvirt.open(self.uri)
                except libvirt.libvirtError as e:
                    raise HypervisorError(f"cannot connect to {self.uri}: {e}",
                                          retryable=True) from e
            return self._conn

    @staticmethod
    def _alive(conn: libvirt.virConnect) -> bool:
        try:
            return bool(conn.isAlive())
        except libvirt.libvirtError:
            return False

    def _discard_locked(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass  # closing a dead connection may fail; it is dropped either way

    def close(self) -> None:
        """Close the connection; a later call opens a new one."""
        with self._lock:
            self._discard_locked()

    def error(self, what: str, err: libvirt.libvirtError) -> HypervisorError:
        """`err` as a HypervisorError; a connection error also drops the connection."""
        retryable = is_connection_error(err)
        if retryable:
            self.close()
        return HypervisorError(f"{what}: {err}", retryable=retryable)

    def call(self, what: str, fn: Callable[[libvirt.virConnect], T], *,
             idempotent: bool = False) -> T:
        """Run `fn` on the connection, translating libvirt errors.

        An `idempotent` call (a read) is retried once on a fresh connection if the
        old one had dropped; anything else is not, since it may have taken effect.
        """
        attempts = 2 if idempotent else 1
        for attempt in range(attempts):
            conn = self.connection()
            try:
                return fn(conn)
            except libvirt.libvirtError as e:
                err = self.error(what, e)
                if not err.retryable or attempt == attempts - 1:
                    raise err from e
        raise AssertionError("unreachable")

    def lookup(self, uuid: str) -> libvirt.virDomain | None:
        """The domain with this UUID, or None if libvirt knows none."""
        def find(conn: libvirt.virConnect) -> libvirt.virDomain | None:
            try:
                return conn.lookupByUUIDString(uuid)
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise

        return self.call(f"look up domain {uuid}", find, idempotent=True)

    def list_domains(self) -> list[libvirt.virDomain]:
        """Every domain libvirt knows, running or not, ours or not."""
        return self.call("list domains", lambda c: list(c.listAllDomains(0)), idempotent=True)

    def define(self, xml: str) -> libvirt.virDomain:
        """Define a persistent domain from XML; on failure libvirt defined nothing."""
        return self.call("define domain", lambda c: c.defineXML(xml))
