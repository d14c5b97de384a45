"""A logged-in connection to an XCP-ng pool's master, over pinned HTTPS.

Login: `session.login_with_password(user, password, "1.0", "vauban")` on the URL's host;
a member answers `HOST_IS_SLAVE [master address]` and the client follows it, on the
URL's port, only when that address's certificate is pinned too (else it refuses, in
words). When the master cannot be reached, the other pinned hosts are tried: one is
taken only if it logs us in as master of the same pool. A call answered
`SESSION_INVALID` logs in once more and is retried once. Every XAPI `int` argument
travels as a decimal string (XML-RPC ints are 32-bit; XAPI's are 64). The password
lives in this object and XenAPI's session only: never in a message.

Not thread-safe by design (XenAPI's ServerProxy is not): one PoolClient per thread.
"""

from __future__ import annotations

import http.client
import logging
import threading
import urllib.parse
import xmlrpc.client
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import XenAPI

from agent.drivers.xapi.errors import (
    CertificateMismatch,
    MasterRefused,
    PoolUnreachable,
    SessionInvalid,
    XapiError,
    parse_result,
)
from agent.drivers.xapi.transport import (
    DEFAULT_TIMEOUT,
    PinnedHTTPSConnection,
    PinnedTransport,
    normalize_fingerprint,
    pem_fingerprint,
    pinned_connection,
)

log = logging.getLogger(__name__)

ORIGINATOR = "vauban"
API_VERSION = "1.0"
LOGOUT_TIMEOUT = 5.0  # seconds a logout over a fresh connection may take (at shutdown)


def to_wire(value: Any) -> Any:
    """`value` with every int (not bool) as a decimal string, as XAPI's int64 travels."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return {str(k): to_wire(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_wire(v) for v in value]
    return value


class _Session(XenAPI.Session):
    """XenAPI's session with our answer parsing, one re-login (XenAPI tries three times,
    and its parser raises TypeError on an answer without Status) and a login count."""

    def __init__(self, uri: str, transport: PinnedTransport, label: str) -> None:
        super().__init__(uri, transport=transport)
        self.uri = uri  # for a logout over a fresh transport (close after interrupt)
        self.label = label
        self.logins = 0

    def __repr__(self) -> str:
        return f"<XAPI session to {self.label}>"  # never the login parameters

    def _login(self, method: str, params: tuple[Any, ...]) -> None:
        answer = getattr(self, f"session.{method}")(*params)
        self._session = parse_result(answer, self.label)
        self.last_login_method, self.last_login_params = method, params
        self.logins += 1

    def once(self, methodname: str, params: tuple[Any, ...]) -> Any:
        """One call with this session, no re-login."""
        return parse_result(getattr(self, methodname)(self._session, *params), self.label)

    def xenapi_request(self, methodname: str, params: tuple[Any, ...]) -> Any:
        if methodname.startswith("login"):
            self._login(methodname, params)
            return None
        for attempt in (0, 1):
            try:
                return self.once(methodname, params)
            except SessionInvalid:
                if attempt or self.last_login_method is None:
                    raise
                self._login(self.last_login_method, self.last_login_params)
        raise AssertionError("unreachable")


class PoolClient:
    """One logged-in session to a pool master (see the module docstring).

    `pins` maps each host address the client may talk to onto its certificate's
    SHA-256; `certificates` each onto that certificate (PEM), where the region kept it
    (a host without one is read at first contact: see transport). `logins` counts every
    login this client made (a change means the session, and with it every ref, was
    replaced). `address` is the master's address in use.
    `pool_uuid`: the pool it must be (the enrolled one); None = the first one met.
    """

    def __init__(self, url: str, username: str, password: str, pins: Mapping[str, str],
                 *, timeout: float = DEFAULT_TIMEOUT, label: str | None = None,
                 pool_uuid: str | None = None,
                 certificates: Mapping[str, str] | None = None) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "https" or not parsed.hostname:
            raise ValueError(f"{url!r}: a pool is reached over https://HOST[:PORT] only")
        self.address, self.port = parsed.hostname, parsed.port or 443
        self.pins: dict[str, str] = {}
        self.certificates: dict[str, str] = {}
        self.take_pins(pins, certificates or {})
        self.label = label or parsed.hostname
        self.timeout = timeout
        self._credentials = (username, password)
        self.pool_uuid: str | None = pool_uuid
        self._session: _Session | None = None
        self._old_logins = 0
        self._lock = threading.Lock()  # between the owner thread and interrupt()
        self._interrupted = False
        # asks the region for its pins again; True when they changed (a re-pin)
        self.on_certificate_refused: Callable[[], bool] | None = None

    def take_pins(self, pins: Mapping[str, str], certificates: Mapping[str, str]) -> None:
        """Pin each host of `pins` from now on. ValueError, nothing taken, when a
        fingerprint is malformed or a certificate is not that of its host's pin."""
        normal = {address: normalize_fingerprint(fp) for address, fp in pins.items()}
        for address, pem in certificates.items():
            try:
                matches = pem_fingerprint(pem) == normal.get(address)
            except ValueError as e:
                raise ValueError(f"host {address}: no certificate in what was kept ({e})") \
                    from e
            if not matches:
                raise ValueError(f"host {address}: the certificate kept is not its pinned one")
        self.pins, self.certificates = normal, dict(certificates)

    @property
    def logins(self) -> int:
        current = self._session.logins if self._session is not None else 0
        return self._old_logins + current

    def connect_pinned(self, address: str, port: int,
                       timeout: float | None = None) -> PinnedHTTPSConnection:
        """A connection (nothing sent yet) to pool host `address` under its pin. When the
        host shows another certificate and the region's pins changed since (an operator
        re-pinned it), once more with the new pin. KeyError when the host has no pin;
        CertificateMismatch or OSError when it cannot be had."""
        for attempt in (0, 1):
            try:
                return pinned_connection(address, port, self.pins[address],
                                         timeout or self.timeout,
                                         self.certificates.get(address))
            except CertificateMismatch:
                refresh = self.on_certificate_refused
                if attempt or refresh is None or not refresh():
                    raise
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _open(self, address: str) -> _Session:
        pin = self.pins.get(address)
        if pin is None:
            raise MasterRefused(f"pool {self.label}: host {address} has no pinned "
                                "certificate: refused")
        host = f"[{address}]" if ":" in address else address
        return _Session(f"https://{host}:{self.port}/",
                        PinnedTransport(pin, self.timeout, self.certificates.get(address)),
                        self.label)

    def connect(self) -> None:
        """Log in to the pool master. After success `address` is the master's and
        `pool_uuid` the pool's; on failure no session is held.

        The master in use first (the URL's host at the start); when it cannot be reached,
        every other pinned host at once (each bounded by the socket timeout), the first
        in address order taken that logs us in as master (or names a pinned master that
        does) of the same pool uuid: an ejected host is a master too, of a pool of its
        own. Raises PoolUnreachable (every reason in its message), XapiError,
        CertificateMismatch, MasterRefused.
        """
        self.close()
        try:
            self._hold(*self._login_at(self.address))
            return
        except PoolUnreachable as e:
            reasons = [self._reason(self.address, e)]
        candidates = sorted(a for a in self.pins if a != self.address)
        with ThreadPoolExecutor(max_workers=max(1, len(candidates))) as probes:
            futures = [(c, probes.submit(self._login_at, c)) for c in candidates]
        chosen: tuple[str, _Session, str] | None = None
        for candidate, future in futures:
            try:
                answer = future.result()
            except XapiError as refused:
                reasons.append(self._reason(candidate, refused))
                continue
            if chosen is None:
                chosen = answer
            else:
                self._discard(answer[1])
        if chosen is None:
            raise PoolUnreachable(f"pool {self.label}: no host answers as its master: "
                                  + "; ".join(reasons))
        log.warning("pool %s: %s; %s answers as master", self.label, reasons[0], chosen[0])
        self._hold(*chosen)

    def _reason(self, address: str, error: XapiError) -> str:
        """`error` in a list of reasons: without the pool's name, with the host's."""
        text = str(error).removeprefix(f"pool {self.label}: ")
        return text if address in text else f"{address}: {text}"

    def _login_at(self, address: str) -> tuple[str, _Session, str]:
        """(master address, logged-in session, pool uuid) from a login at `address`,
        following one HOST_IS_SLAVE to a pinned master. Changes nothing in `self`
        (probes run side by side); a session refused after its login is logged out."""
        for _ in range(2):
            session = self._open(address)
            try:
                self._guarded(address, session.login_with_password, *self._credentials,
                              API_VERSION, ORIGINATOR)
            except XapiError as e:
                if e.code != "HOST_IS_SLAVE" or not e.params:
                    raise
                master = e.params[0]
                if master not in self.pins:
                    raise MasterRefused(
                        f"pool {self.label}: host {address} is not the pool master; it names "
                        f"{master} as master, whose certificate is not pinned: refused "
                        f"(pin {master}'s SHA-256 to follow it)", params=[master]) from e
                address = master
                continue
            try:
                return address, session, self._pool_of(address, session)
            except XapiError:
                self._discard(session)
                raise
        raise MasterRefused(f"pool {self.label}: the hosts name each other as master")

    def _pool_of(self, address: str, session: _Session) -> str:
        """The uuid of the pool `session` is logged in to; MasterRefused when it is not
        the expected one (a host ejected from the pool masters a pool of its own)."""
        records = self._guarded(address, session.xenapi_request, "pool.get_all_records", ())
        uuids = [str(r.get("uuid")) for r in records.values()]
        if len(uuids) == 1 and self.pool_uuid in (None, uuids[0]):
            return uuids[0]
        raise MasterRefused(
            f"pool {self.label}: host {address} is master of pool {', '.join(uuids)}, "
            f"not of pool {self.pool_uuid}: refused (a host ejected from the pool?)")

    def _hold(self, address: str, session: _Session, pool_uuid: str) -> None:
        """Keep `session` (to the master at `address`) as this client's session."""
        with self._lock:
            self.address, self._session = address, session
            self.pool_uuid = self.pool_uuid or pool_uuid
            if self._interrupted:
                session.transport.abort()

    def _discard(self, session: _Session) -> None:
        """Log a session out that will not be kept (its logins still count)."""
        with self._lock:
            self._old_logins += session.logins
        session.logins = 0
        self._logout(session)

    def _guarded(self, address: str, fn: Any, *args: Any) -> Any:
        """`fn(*args)` with network and HTTP failures as PoolUnreachable."""
        try:
            return fn(*args)
        except (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError) as e:
            raise PoolUnreachable(f"pool {self.label}: {address}:{self.port} "
                                  f"unreachable: {e}") from e
        except xmlrpc.client.Fault as e:
            raise XapiError(f"pool {self.label}: XML-RPC fault {e.faultCode}: "
                            f"{e.faultString}", retryable=True) from e

    def call(self, method: str, *args: Any, relogin: bool = True) -> Any:
        """The value of XAPI `method(session, *args)` (ints sent as strings); connects
        first when no session is held. `relogin`: on SESSION_INVALID log in once more
        and retry once (else SessionInvalid is raised). Raises XapiError (mapped),
        PoolUnreachable, CertificateMismatch."""
        if self._session is None:
            self.connect()
        session = self._session
        assert session is not None
        params = tuple(to_wire(list(args)))
        try:
            if relogin:
                return self._guarded(self.address, session.xenapi_request, method, params)
            return self._guarded(self.address, session.once, method, params)
        except PoolUnreachable:
            if not self._interrupted:  # interrupted: kept, for close() to log it out
                self._forget()  # no logout: it would wait on the unreachable host again
            raise

    def call_plain(self, method: str) -> Any:
        """The answer of `method()` sent without a session, as it came (not parsed): for
        XML-RPC introspection (`system.listMethods`), which takes no session. Connects
        first when no session is held; PoolUnreachable on network failures."""
        if self._session is None:
            self.connect()
        session = self._session
        assert session is not None
        try:
            return self._guarded(self.address, getattr(session, method))
        except PoolUnreachable:
            if not self._interrupted:
                self._forget()
            raise

    def session_id(self) -> str:
        """The handle of the session held (logging in first when none is), for xapi's
        HTTP handlers (imports, consoles), which take it in a cookie. A secret: never
        in a URL, a message or a log line."""
        if self._session is None:
            self.connect()
        assert self._session is not None
        return str(self._session._session)

    def interrupt(self) -> None:
        """From another thread: end the call in progress (it raises PoolUnreachable)
        and refuse every later one. The client is of no further use."""
        with self._lock:
            self._interrupted = True
            if self._session is not None:
                self._session.transport.abort()

    def _forget(self) -> None:
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            self._old_logins += session.logins

    def close(self) -> None:
        """Log out (best effort: the session may be gone already) and forget it. After
        `interrupt()` the logout goes over a fresh connection (bounded by LOGOUT_TIMEOUT):
        the session's own is closed for good, and a session left open counts against
        the pool's limit of sessions until xapi expires it."""
        session = self._session
        self._forget()
        if session is None:
            return
        if session.transport.aborted:
            old = session.transport
            fresh = _Session(session.uri, PinnedTransport(old.pin, LOGOUT_TIMEOUT,
                                                          old.certificate), self.label)
            fresh._session = session._session
            session = fresh
        self._logout(session)

    @staticmethod
    def _logout(session: _Session) -> None:
        try:
            getattr(session, "session.logout")(session._session)
        except Exception:  # noqa: BLE001 - a logout that fails leaves nothing to undo
            pass
