"""A logged-in connection to an XCP-ng pool's master, over pinned HTTPS.

Login: `session.login_with_password(user, password, "1.0", "vauban")` on the URL's host;
a member answers `HOST_IS_SLAVE [master address]` and the client follows it, on the
URL's port, only when that address's certificate is pinned too (else it refuses, in
words). A call answered `SESSION_INVALID` logs in once more and is retried once. Every
XAPI `int` argument travels as a decimal string (XML-RPC ints are 32-bit; XAPI's are
64). The password lives in this object and XenAPI's session only: never in a message.

Not thread-safe by design (XenAPI's ServerProxy is not): one PoolClient per thread.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
import xmlrpc.client
from collections.abc import Mapping
from typing import Any

import XenAPI

from agent.drivers.xapi.errors import (
    MasterRefused,
    PoolUnreachable,
    SessionInvalid,
    XapiError,
    parse_result,
)
from agent.drivers.xapi.transport import DEFAULT_TIMEOUT, PinnedTransport, normalize_fingerprint

ORIGINATOR = "vauban"
API_VERSION = "1.0"


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
    SHA-256. `logins` counts every login this client made (a change means the session,
    and with it every ref, was replaced). `address` is the master's address in use.
    """

    def __init__(self, url: str, username: str, password: str, pins: Mapping[str, str],
                 *, timeout: float = DEFAULT_TIMEOUT, label: str | None = None) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "https" or not parsed.hostname:
            raise ValueError(f"{url!r}: a pool is reached over https://HOST[:PORT] only")
        self.address, self.port = parsed.hostname, parsed.port or 443
        self.pins = {address: normalize_fingerprint(fp) for address, fp in pins.items()}
        self.label = label or parsed.hostname
        self.timeout = timeout
        self._credentials = (username, password)
        self._session: _Session | None = None
        self._old_logins = 0
        self._lock = threading.Lock()  # between the owner thread and interrupt()
        self._interrupted = False

    @property
    def logins(self) -> int:
        current = self._session.logins if self._session is not None else 0
        return self._old_logins + current

    def _open(self, address: str) -> _Session:
        pin = self.pins.get(address)
        if pin is None:
            raise MasterRefused(f"pool {self.label}: host {address} has no pinned "
                                "certificate: refused")
        host = f"[{address}]" if ":" in address else address
        return _Session(f"https://{host}:{self.port}/",
                        PinnedTransport(pin, self.timeout), self.label)

    def connect(self) -> None:
        """Log in to the pool master. After success `address` is the master's; on
        failure (XapiError, CertificateMismatch, PoolUnreachable) no session is held."""
        self.close()
        address = self.address
        for _ in range(2):
            session = self._open(address)
            try:
                self._guarded(session.login_with_password, *self._credentials,
                              API_VERSION, ORIGINATOR)
            except XapiError as e:
                self._old_logins += session.logins
                if e.code != "HOST_IS_SLAVE" or not e.params:
                    raise
                master = e.params[0]
                if master not in self.pins:
                    raise MasterRefused(
                        f"pool {self.label}: host {address} is not the pool master; it names "
                        f"{master} as master, whose certificate is not pinned: refused "
                        f"(pin {master}'s SHA-256 to follow it)") from e
                address = master
                continue
            with self._lock:
                self.address, self._session = address, session
                if self._interrupted:
                    session.transport.abort()
            return
        raise MasterRefused(f"pool {self.label}: the hosts name each other as master")

    def _guarded(self, fn: Any, *args: Any) -> Any:
        """`fn(*args)` with network and HTTP failures as PoolUnreachable."""
        try:
            return fn(*args)
        except (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError) as e:
            raise PoolUnreachable(f"pool {self.label}: {self.address}:{self.port} "
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
        if relogin:
            return self._guarded(session.xenapi_request, method, params)
        return self._guarded(session.once, method, params)

    def interrupt(self) -> None:
        """From another thread: end the call in progress (it raises PoolUnreachable)
        and refuse every later one. The client is of no further use."""
        with self._lock:
            self._interrupted = True
            if self._session is not None:
                self._session.transport.abort()

    def close(self) -> None:
        """Log out (best effort: the session may be gone already) and forget it."""
        session, self._session = self._session, None
        if session is None:
            return
        self._old_logins += session.logins
        try:
            getattr(session, "session.logout")(session._session)
        except Exception:  # noqa: BLE001 - a logout that fails leaves nothing to undo
            pass
