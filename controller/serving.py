"""The controller's HTTP server: gunicorn with a gevent worker that bounds every client.

Waiting connections are the normal case (every agent holds a long-poll, every UI
tab an event stream), so a connection is a greenlet, not a thread: one process
holds tens of thousands. What a client may hold is bounded:

- per source address, at most `max_per_source` open connections; more are
  closed at once, before any TLS work is spent on them;
- the TLS handshake must end within `handshake_s`;
- a request's line and headers must arrive within `header_s` of the connection
  being ready for it (gunicorn's keep-alive deadline, applied to every request,
  the first one included), so an idle keep-alive connection is closed then too;
  a connection whose client certificate the TLS layer verified (a node of the
  region) has `node_keepalive_s` instead, for its silences inside a request too:
  its agent reports at an interval that grows with the region, and a handshake per
  report was a quarter of the controller's CPU at 1,000 agents;
- while a body is read or a response written, the peer may stay silent at most
  `idle_s` at a time; a body cut short that way is answered 408.

The server certificate is renewed while the server runs: every worker calls the
application's `tls_upkeep` (which renews the certificate files when due) every
`tls_check_s`, and new connections get a TLS context built from the new files;
connections already open keep theirs.

The gevent worker monkey-patches the standard library in the worker process, so
threads, locks and events used by the application (change notices, the
housekeeper) become greenlets, and waiting on them blocks nothing else.
"""

from __future__ import annotations

import logging
import os
import resource
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import gevent
from gevent.pool import Pool
from gevent.server import StreamServer
from gunicorn.glogging import Logger
from gunicorn.sock import ssl_context
from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker

from controller.config import ClientLimits

log = logging.getLogger(__name__)

REFUSAL_LOG_EVERY_S = 60.0  # one warning per source per minute, however many refusals


FILES_BESIDE_CONNECTIONS = 1024  # listeners, database, logs, image files


def raise_open_files_limit(wanted: int) -> int:
    """Raise the limit on open files towards `wanted` (+ margin); returns the new soft limit.

    Each connection is a file descriptor. A privileged process (CAP_SYS_RESOURCE) raises
    the hard limit too when it is lower; otherwise the hard limit is never exceeded.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted + FILES_BESIDE_CONNECTIONS
    if hard != resource.RLIM_INFINITY and target > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), target))
            hard = target
        except (OSError, ValueError):  # not privileged, or above the kernel's nr_open
            target = hard
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def limits_within_open_files(limits: ClientLimits) -> ClientLimits:
    """`limits` with max_connections lowered, if need be, to what the open-files limit
    leaves (raised first, as far as this process may). At that many connections the server
    stops accepting and new clients wait in the listen queue; beyond it every accept fails
    with EMFILE and clients are dropped at random, agents and operators alike."""
    room = max(1, raise_open_files_limit(limits.max_connections) - FILES_BESIDE_CONNECTIONS)
    if limits.max_connections <= room:
        return limits
    log.warning("%d connections are allowed per worker (VAUBAN_MAX_CONNECTIONS shared out "
                "among VAUBAN_WORKERS) but this process may "
                "open only %d files: at most %d connections are served at once; raise the "
                "limit on open files (LimitNOFILE) to serve more", limits.max_connections,
                room + FILES_BESIDE_CONNECTIONS, room)
    return replace(limits, max_connections=room)


def cooperative_database_waits() -> None:
    """Make psycopg wait for its socket through the (patched) select module.

    psycopg chooses how it waits when first imported, and chooses a wait in C that gevent
    cannot interrupt unless the standard library is patched by then. The master process
    imported it (it migrates the database) before the worker was patched: every query, and
    the change-notice listener, would stop all the worker's greenlets while it waits.
    """
    from psycopg import waiting

    if getattr(waiting, "wait_c", None) is not None and waiting.wait is waiting.wait_c:
        waiting.wait = waiting.wait_poll  # looks up select.poll, patched, at each call


SECRET_PATHS = ("/api/v1/consoles/",)  # the rest of such a path is a secret (a console ticket)


def redact_path(path: str) -> str:
    """`path` with the secret that follows one of SECRET_PATHS replaced by '…'."""
    for prefix in SECRET_PATHS:
        if path.startswith(prefix):
            return prefix + "…"
    return path


class RedactingLogger(Logger):
    """gunicorn's logger, with the secrets some paths carry kept out of the access log."""

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        path = str(atoms.get("U", ""))
        redacted = redact_path(path)
        if redacted != path:
            atoms["U"] = redacted
            atoms["r"] = f"{atoms.get('m', '')} {redacted} {atoms.get('H', '')}"
        return atoms


class SourceLedger:
    """Open connections per source address, and when each refusal was last logged."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: Counter[str] = Counter()
        self._logged: dict[str, float] = {}

    def admit(self, source: str) -> bool:
        """Count a new connection from `source`; False (and nothing counted) over the limit."""
        if self.open[source] >= self.limit:
            now = time.monotonic()
            if now - self._logged.get(source, -REFUSAL_LOG_EVERY_S) >= REFUSAL_LOG_EVERY_S:
                self._logged[source] = now
                log.warning("refused connections from %s: it holds %d, the limit per source",
                            source, self.limit)
            return False
        self.open[source] += 1
        return True

    def release(self, source: str) -> None:
        self.open[source] -= 1
        if self.open[source] <= 0:
            del self.open[source]


class TlsContext:
    """The server's TLS context, built again from its certificate files once they change.

    `current` is the context new connections get. The files are compared by identity and
    modification time: a renewal replaces each file by rename, key first, so a changed
    certificate file comes with its key already in place.
    """

    def __init__(self, build: Callable[[], ssl.SSLContext], cert_file: str) -> None:
        self._build, self._cert_file = build, cert_file
        self._stamp = self._stamp_now()
        self.current = build()

    def _stamp_now(self) -> tuple[int, int, int]:
        st = os.stat(self._cert_file)
        return st.st_ino, st.st_mtime_ns, st.st_size

    def refresh(self) -> bool:
        """Build the context again if the files changed; True when it did. A pair that does
        not load (ssl.SSLError, OSError) leaves the current context, and is tried again at
        the next call."""
        stamp = self._stamp_now()
        if stamp == self._stamp:
            return False
        self.current = self._build()
        self._stamp = stamp
        return True


class BoundedGeventWorker(GeventWorker):
    """gunicorn's gevent worker with the per-client bounds above.

    The limits come from the gunicorn application object (`app.limits`).
    """

    def patch(self) -> None:
        super().patch()
        cooperative_database_waits()

    def run(self) -> None:
        limits: ClientLimits = getattr(self.app, "limits", ClientLimits())
        tls = TlsContext(partial(ssl_context, self.cfg), self.cfg.certfile) \
            if self.cfg.is_ssl else None
        ledger = SourceLedger(limits.max_per_source)
        servers = []
        for listener in self.sockets:
            listener.setblocking(1)
            handle = partial(self._serve_client, listener, tls, limits, ledger)
            server = StreamServer(listener, handle=handle, spawn=Pool(limits.max_connections))
            server.start()
            servers.append(server)
        upkeep = getattr(self.app, "tls_upkeep", None)
        keeper = gevent.spawn(self._keep_tls_fresh, tls, upkeep,
                              float(getattr(self.app, "tls_check_s", 60.0))) \
            if tls is not None and upkeep is not None else None
        while self.alive:
            self.notify()
            gevent.sleep(1.0)
        if keeper is not None:
            keeper.kill()
        self._drain(servers)

    def _keep_tls_fresh(self, tls: TlsContext, upkeep: Callable[[], object],
                        every_s: float) -> None:
        """Every `every_s`: let the application renew the certificate when due, and give new
        connections a context of the files on disk. A failure is logged and tried again."""
        while self.alive:
            gevent.sleep(every_s)
            try:
                upkeep()
                if tls.refresh():
                    log.info("new connections get the renewed server certificate")
            except Exception:
                log.exception("renewing or loading the server certificate failed; "
                              "trying again in %.0fs", every_s)

    def _drain(self, servers: list[StreamServer]) -> None:
        """Stop accepting, let requests in flight end within the graceful timeout."""
        for server in servers:
            server.close()
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while time.monotonic() < deadline:
            if all(s.pool.free_count() == s.pool.size for s in servers):
                return
            self.notify()
            gevent.sleep(0.5)  # the pool offers no event for "empty"
        for server in servers:
            server.stop(timeout=1)

    def _serve_client(self, listener: Any, tls: TlsContext | None, limits: ClientLimits,
                      ledger: SourceLedger, client: Any, addr: Any) -> None:
        source = str(addr[0]) if isinstance(addr, tuple) else "unix"
        if not ledger.admit(source):
            client.close()
            return
        context = tls.current if tls is not None else None
        try:
            if context is not None:
                client = self._handshake(client, context, limits.handshake_s)
                if client is None:
                    return
            node = context is not None and bool(client.getpeercert())
            # the socket's own timeout also bounds the wait for the next request: a node's
            # idle connection would otherwise end after idle_s all the same
            client.settimeout(max(limits.idle_s, limits.node_keepalive_s) if node
                              else limits.idle_s)
            # read by timeout_ctx, which gunicorn calls with no access to the connection
            gevent.getcurrent().request_deadline_s = \
                limits.node_keepalive_s if node else limits.header_s
            AsyncWorker.handle(self, listener, client, addr)
        finally:
            ledger.release(source)

    def timeout_ctx(self) -> gevent.Timeout:
        """The deadline for the next request's line and headers on this greenlet's connection."""
        deadline = getattr(gevent.getcurrent(), "request_deadline_s", self.cfg.keepalive)
        return gevent.Timeout(deadline, False)

    def _handshake(self, client: Any, context: ssl.SSLContext, within_s: float) -> Any | None:
        """The TLS socket, or None (connection closed) if the handshake failed or took too long."""
        client.settimeout(within_s)
        tls = None
        try:
            with gevent.Timeout(within_s, False):
                tls = context.wrap_socket(client, server_side=True,
                                          suppress_ragged_eofs=self.cfg.suppress_ragged_eofs)
        except (ssl.SSLError, OSError) as e:
            self.log.debug("TLS handshake failed: %s", e)
        if tls is None:
            client.close()
        return tls
