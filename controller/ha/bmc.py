"""A node's BMC (baseboard management controller), spoken to over IPMI (RMCP+).

The controller powers a lost node off through its BMC before it restarts that node's
VMs elsewhere, so `Bmc.power_off` returns only once a separate read of the power state
says off; anything else is a `BmcError` whose message names the node, the BMC's address
and what went wrong in an operator's words.

How to call it: directly, from the greenlet (or thread) that needs it, and not through
`controller.offload.off_loop`. pyghmi (the IPMI library) does its I/O on its own thread
with `select`, `threading.Event` and sockets, which gevent's monkey-patching makes
cooperative: while a BMC is slow or gone, the event loop keeps serving (measured: a
dead BMC's 5 s of retries, the loop ticking throughout). Concurrent calls into pyghmi,
from greenlets or from the offload pool's threads, were seen to hang the process
(pyghmi 1.6.19 under gevent), so every call here holds one process-wide lock: BMC
calls run one at a time.

How long a call may take: each IPMI exchange gives up after pyghmi's own retries, which
it does not let callers shorten (measured against ipmi_sim: about 5 s for a BMC that
does not answer a login, about 27 s for one that stops answering in the middle of a
command). `power_off` then reads the state back for at most `timeout_s` more.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger(__name__)

PowerState = Literal["on", "off"]
DEFAULT_TIMEOUT_S = 30.0
_POLL_S = 0.5  # how often power_off reads the state back while the BMC reports "on"
# see the module docstring: pyghmi is used by one caller at a time. Made on first use, in
# the serving process: a lock made at import time (in gunicorn's master, before gevent
# patches threading) would be a real one, and a greenlet waiting on it would hold up the
# whole event loop, the holder included
_LOCK: threading.Lock | None = None


def _lock() -> threading.Lock:
    global _LOCK
    if _LOCK is None:
        _LOCK = threading.Lock()
    return _LOCK


class BmcError(Exception):
    """The BMC did not do what was asked; the message says why, for an operator."""


@dataclass(frozen=True)
class Bmc:
    """The BMC of node `node`, at `address`:`port` (UDP), as `username`/`password`."""

    node: str
    address: str
    port: int
    username: str
    password: str = field(repr=False)  # never in a log or a test report
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def where(self) -> str:
        return f"BMC of node {self.node} at {self.address}:{self.port}"

    def power_state(self) -> PowerState:
        """The chassis power state as the BMC reads it now. BmcError if it does not
        answer, refuses the credentials or answers something else than on/off."""
        answer = self._call(lambda c: c.get_power())
        state = answer.get("powerstate")
        if state not in ("on", "off"):
            raise BmcError(f"{self.where} answered an unknown power state: {answer!r}")
        return "on" if state == "on" else "off"

    def power_off(self) -> None:
        """Cut the node's power (a hard off, not a shutdown request). Returns only once a
        separate read of the power state says off. BmcError otherwise, and then the node
        may still be on: nothing may be taken as fenced."""
        started = time.monotonic()
        deadline = started + self.timeout_s
        self._call(lambda c: c.set_power("off", wait=False))
        asked, reads = time.monotonic(), 0
        while True:
            reads += 1
            if self.power_state() == "off":
                log.info("%s: power off asked in %.1f s, read back off in %.1f s more "
                         "(%d reads)", self.where, asked - started, time.monotonic() - asked,
                         reads)
                return
            if time.monotonic() >= deadline:
                raise BmcError(f"{self.where} accepted the power off, but still reports "
                               f"the power on after {self.timeout_s:.0f} s")
            time.sleep(_POLL_S)  # the BMC has no way to tell when the power is off

    def power_on(self) -> None:
        """Switch the node's power on (it then boots). BmcError if the BMC refuses."""
        self._call(lambda c: c.set_power("on", wait=False))

    def _call(self, action: Any) -> dict[str, Any]:
        """`action(command)` on a logged-in IPMI session, errors turned into BmcError."""
        # imported here, not at import time: in the serving process, once gevent patched
        from pyghmi import exceptions as pyghmi_exceptions
        from pyghmi.ipmi import command as ipmi_command

        with _lock():
            started = time.monotonic()
            try:
                # bytes: pyghmi 1.6.19 compares its cached sessions' (encoded) credentials
                # with the given ones, and with str never finds a session it made
                session = ipmi_command.Command(
                    bmc=self.address, port=self.port, userid=self.username.encode(),
                    password=self.password.encode(), keepalive=False)
                try:
                    result: dict[str, Any] = action(session)
                finally:
                    _close(session)
            except pyghmi_exceptions.IpmiException as e:
                raise BmcError(self._explain(e, time.monotonic() - started)) from e
            except OSError as e:
                raise BmcError(f"{self.where} could not be reached: {e}") from e
        if "error" in result:
            raise BmcError(f"{self.where} refused: {result['error']}")
        return result

    def _explain(self, error: Exception, waited: float) -> str:
        text = str(error)
        if "password" in text.lower():
            return (f"{self.where} refused the password for user {self.username!r} "
                    f"({text})")
        if "privilege" in text.lower() or "user" in text.lower():
            return f"{self.where} refused user {self.username!r}: {text}"
        # a new session's login gets no answer ("None"); a cached session that loses
        # its BMC says "Session no longer connected"
        silent = ("timeout", "timed out", "no longer connected")
        if text in ("", "None") or any(word in text.lower() for word in silent):
            said = "" if text in ("", "None") else f": {text}"
            return f"{self.where} did not answer (waited {waited:.1f} s{said})"
        return f"{self.where} failed: {text}"


def _close(command: Any) -> None:
    """Log the command's session out. A BMC has few session slots (often 4 or 5), and
    pyghmi would otherwise keep the session and reuse it at the next call, minutes later,
    when the BMC has long dropped it: that call then waits out pyghmi's retries before it
    logs in again (measured in the lab: a power off confirmed after 20 s instead of 0.4 s).
    A failure to log out is logged and otherwise ignored: the call's answer stands."""
    try:
        command.ipmi_session.logout()
    except Exception as e:  # noqa: BLE001 (pyghmi raises several kinds; none matters here)
        log.info("IPMI session not logged out: %s", e)
