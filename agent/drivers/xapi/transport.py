"""HTTPS to one XCP-ng host, pinned to the SHA-256 of its certificate.

XCP-ng hosts present self-signed certificates, so no CA can vouch for them: the
operator pins each host's fingerprint at enrollment. Every connection that carries a
byte is verified by OpenSSL (CERT_REQUIRED) against one trust anchor only: the pinned
certificate itself (VERIFY_X509_PARTIAL_CHAIN, so a host certificate signed by a CA of
the pool's own is its own anchor too). OpenSSL checks the handshake against it, its
signature, validity dates, purpose and that it names the address the host is reached
at; the fingerprint is compared on top. There is no
way to switch either check off.

The pinned certificate is the PEM the region kept at enrollment (the pool's record of
each member, whose SHA-256 the operator confirmed). Where only a fingerprint is known
(the first contact: enrollment's probe, `vauban xcpng check`), the certificate the host
presents is read by a handshake that sends nothing, taken only if its SHA-256 is the
pin, and then is the anchor of the connection that is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import inspect
import socket
import ssl
import string
import xmlrpc.client
from collections.abc import Callable
from typing import Any

from agent.drivers.xapi.errors import CertificateInvalid, CertificateMismatch

DEFAULT_TIMEOUT = 45.0  # above event.from's 30 s wait, so a quiet pool is no timeout


def normalize_fingerprint(text: str) -> str:
    """A SHA-256 fingerprint as 64 lower-case hex digits, from any usual spelling
    (`AA:BB:…`, `aabb…`, with or without a `sha256:` prefix); ValueError otherwise."""
    digits = text.strip().lower().removeprefix("sha256:").replace(":", "")
    if len(digits) != 64 or any(c not in string.hexdigits for c in digits):
        raise ValueError(f"not a SHA-256 fingerprint: {text!r} (64 hex digits expected)")
    return digits


def format_fingerprint(digits: str) -> str:
    """A fingerprint as operators compare them: `AA:BB:…` (as openssl prints it)."""
    upper = digits.upper()
    return ":".join(upper[i:i + 2] for i in range(0, len(upper), 2))


def fingerprint_of(der: bytes) -> str:
    """The SHA-256 fingerprint (lower-case hex) of a DER certificate."""
    return hashlib.sha256(der).hexdigest()


def pem_fingerprint(pem: str) -> str:
    """The SHA-256 fingerprint (lower-case hex) of a PEM certificate; ValueError when
    `pem` holds none."""
    return fingerprint_of(ssl.PEM_cert_to_DER_cert(pem))


def anchored_context(pem: str) -> ssl.SSLContext:
    """A client context that trusts the certificate `pem` and nothing else."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # the name is checked too: XCP-ng's host certificates carry the management address
    # (xapi's gencert), by which hosts are reached
    context.verify_mode = ssl.CERT_REQUIRED
    # the anchor is the host's own certificate, not a CA above it
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=pem)
    return context


def presented_certificate(address: str, port: int, timeout: float | None) -> str:
    """The certificate (PEM) the host at address:port presents, read by a TLS handshake
    after which the connection is closed: nothing is sent. OSError when it cannot be
    (TimeoutError when no handshake ends within `timeout`)."""
    limit = timeout or DEFAULT_TIMEOUT
    fetch = ssl.get_server_certificate
    if "timeout" in inspect.signature(fetch).parameters:
        return fetch((address, port), timeout=limit)
    # gevent's cooperative copy (the controller serves under gevent) takes no timeout
    from gevent import Timeout

    with Timeout(limit, TimeoutError(f"no TLS handshake with {host_port(address, port)} "
                                     f"within {limit:g} s")):
        return fetch((address, port))


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection that refuses a peer whose certificate is not the pinned one.

    `certificate`: the pinned certificate (PEM) when it is known; its SHA-256 must be
    `pin` (ValueError otherwise). Without it, the presented one is read first and taken
    when its SHA-256 is `pin`.
    """

    def __init__(self, host: str, *, pin: str, timeout: float, certificate: str | None = None,
                 aborted: Callable[[], bool] = lambda: False) -> None:
        super().__init__(host, timeout=timeout)
        self.pin = normalize_fingerprint(pin)
        if certificate is not None and pem_fingerprint(certificate) != self.pin:
            raise ValueError(f"host {host}: the certificate kept for it is not the pinned one")
        self.certificate = certificate
        self.aborted = aborted

    def _where(self) -> str:
        return host_port(self.host, self.port)

    def _presented_fingerprint(self) -> str | None:
        try:
            return pem_fingerprint(presented_certificate(self.host, self.port, self.timeout))
        except (OSError, ValueError):
            return None

    def _anchor(self) -> str:
        """The pinned certificate; CertificateMismatch when the host presents another."""
        if self.certificate is not None:
            return self.certificate
        pem = presented_certificate(self.host, self.port, self.timeout)
        presented = pem_fingerprint(pem)
        if not hmac.compare_digest(presented, self.pin):
            raise CertificateMismatch(self._where(), format_fingerprint(self.pin),
                                      format_fingerprint(presented))
        return pem

    def _refusal(self, error: ssl.SSLCertVerificationError) -> CertificateMismatch:
        """What OpenSSL's refusal means: the pinned certificate presented but not valid
        (expired, or not naming the address), or another certificate presented."""
        presented = self._presented_fingerprint()
        if presented == self.pin:
            return CertificateInvalid(self._where(), format_fingerprint(self.pin),
                                      str(error.verify_message or error))
        return CertificateMismatch(self._where(), format_fingerprint(self.pin),
                                   format_fingerprint(presented) if presented else
                                   f"unknown ({error.verify_message or error})")

    def connect(self) -> None:
        """Connect and shake hands under the pinned certificate as the only trust anchor.
        CertificateMismatch (socket closed) when the peer's certificate is not the pinned
        one, CertificateInvalid when it is but OpenSSL refuses it (expired, say); OSError
        when the host cannot be reached. Nothing is sent before this returns."""
        context = anchored_context(self._anchor())
        http.client.HTTPConnection.connect(self)  # the TCP connection
        try:
            self.sock = context.wrap_socket(self.sock, server_hostname=self.host)
        except ssl.SSLCertVerificationError as e:
            self.close()
            raise self._refusal(e) from e
        except BaseException:
            self.close()
            raise
        presented = fingerprint_of(self.sock.getpeercert(binary_form=True) or b"")
        if not hmac.compare_digest(presented, self.pin):  # the anchor should make this moot
            self.close()
            raise CertificateMismatch(self._where(), format_fingerprint(self.pin),
                                      format_fingerprint(presented))
        if self.aborted():  # checked after `sock` is set: an abort() now or later ends it
            self.close()
            raise ConnectionAbortedError("the connection was closed by its owner")


class PinnedTransport(xmlrpc.client.SafeTransport):
    """XML-RPC over HTTPS to one host whose certificate SHA-256 is `pin`."""

    def __init__(self, pin: str, timeout: float = DEFAULT_TIMEOUT,
                 certificate: str | None = None) -> None:
        super().__init__()
        self.pin = normalize_fingerprint(pin)
        self.certificate = certificate  # the pinned PEM, when known
        self.timeout = timeout
        self.aborted = False

    def abort(self) -> None:
        """End the call in progress (from another thread) and refuse every later one."""
        self.aborted = True
        sock = getattr(self._connection[1], "sock", None)
        if sock is not None:
            # the plain socket's shutdown: wakes a blocked read without touching TLS state;
            # a socket closed meanwhile (fd -1) has nothing left to wake
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def make_connection(self, host: Any) -> http.client.HTTPSConnection:
        if self.aborted:
            raise ConnectionAbortedError("the connection was closed by its owner")
        known, current = self._connection
        if known == host and isinstance(current, http.client.HTTPSConnection):
            return current
        chost, self._extra_headers, _ = self.get_host_info(host)
        connection = PinnedHTTPSConnection(chost, pin=self.pin, timeout=self.timeout,
                                           certificate=self.certificate,
                                           aborted=lambda: self.aborted)
        self._connection = host, connection
        return connection


def host_port(address: str, port: int) -> str:
    """`address:port` as HTTP writes it (an IPv6 address in brackets)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def session_cookie(session_id: str) -> str:
    """The Cookie header value that carries a session to xapi's HTTP handlers: never in
    the URL, so that no log line of a request holds it."""
    return f"session_id={session_id}"


def pinned_connection(address: str, port: int, pin: str, timeout: float = DEFAULT_TIMEOUT,
                      certificate: str | None = None) -> PinnedHTTPSConnection:
    """A connected PinnedHTTPSConnection to one host (for PUT, or CONNECT on its `sock`);
    CertificateMismatch (nothing sent) or OSError when it cannot be had."""
    connection = PinnedHTTPSConnection(host_port(address, port), pin=pin, timeout=timeout,
                                       certificate=certificate)
    connection.connect()
    return connection


def read_head(sock: socket.socket, limit: int = 16384) -> tuple[int, str, bytes]:
    """(status, reason, bytes after the head) of an HTTP answer read from `sock` without
    a buffer that could swallow what follows it (a CONNECT's tunnelled bytes). OSError
    when the connection ends first or the head is not HTTP."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the connection ended before the HTTP answer's head")
        data += chunk
        if len(data) > limit:
            raise ConnectionError(f"an HTTP answer's head longer than {limit} bytes")
    head, _, rest = data.partition(b"\r\n\r\n")
    parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP answer: {parts[0][:40]!r}")
    return int(parts[1]), parts[2] if len(parts) > 2 else "", rest
