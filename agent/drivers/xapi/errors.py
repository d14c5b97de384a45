"""XAPI failures as Vauban errors that say what happened and whether to retry.

A failed XAPI call answers `{Status: Failure, ErrorDescription: [CODE, param…]}`;
`parse_result` turns an answer into its value or an XapiError, and `from_failure` words
each failure we know (a pool's operator reads these messages, never the raw codes alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.drivers.hypervisor.base import HypervisorError

MiB = 1024 * 1024


class XapiError(HypervisorError):
    """A call to an XCP-ng pool failed. `code`/`params`: XAPI's ErrorDescription
    (empty when the failure was not XAPI's own, e.g. the network)."""

    def __init__(self, message: str, *, code: str = "", params: Sequence[str] = (),
                 retryable: bool = False) -> None:
        super().__init__(message, retryable=retryable)
        self.code = code
        self.params = list(params)


class SessionInvalid(XapiError):
    """The session was destroyed (expiry, toolstack restart): log in again."""


class EventsLost(XapiError):
    """The pool lost events between two event.from calls: refetch everything."""


class CertificateMismatch(XapiError):
    """A host presented a certificate other than the pinned one; nothing was sent."""

    def __init__(self, host: str, expected: str, presented: str) -> None:
        super().__init__(
            f"host {host} presented a TLS certificate with SHA-256 {presented}, but "
            f"{expected} is pinned for it: refused, nothing was sent (if the host's "
            "certificate was changed on purpose, re-pin it)")
        self.host, self.expected, self.presented = host, expected, presented


class CertificateInvalid(CertificateMismatch):
    """A host presented its pinned certificate, but OpenSSL refused it (expired, not yet
    valid, not for a server, not naming the host's address); nothing was sent."""

    def __init__(self, host: str, pinned: str, reason: str) -> None:
        XapiError.__init__(
            self, f"host {host} presented its pinned TLS certificate (SHA-256 {pinned}), "
            f"but it is not valid: {reason}: refused, nothing was sent (renew the host's "
            "certificate, then re-pin it)")
        self.host, self.expected, self.presented = host, pinned, pinned


class PoolUnreachable(XapiError):
    """The pool could not be reached over the network; retryable."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


class MasterRefused(XapiError):
    """A host named another as the pool master, and that one cannot be trusted."""


def _mib(value: str) -> str:
    """A byte count from XAPI as MiB, or the value itself when it is no number."""
    return f"{int(value) // MiB} MiB" if value.isdigit() else value


def _describe(code: str, p: list[str], pool: str) -> tuple[str, bool]:
    """(message, retryable) for one XAPI failure."""
    arg = (p + ["", "", ""])
    if code == "SESSION_AUTHENTICATION_FAILED":
        return f"pool {pool}: credentials refused", False
    if code == "HOST_IS_SLAVE":
        return f"pool {pool}: this host is not the master; the master is {arg[0]}", True
    if code == "VM_BAD_POWER_STATE":
        return f"pool {pool}: the VM is {arg[2]}, needs {arg[1]}", False
    if code == "HOST_NOT_ENOUGH_FREE_MEMORY":
        return (f"pool {pool}: no host has {_mib(arg[0])} free "
                f"(largest free: {_mib(arg[1])})"), True
    if code.startswith("SR_BACKEND_FAILURE"):
        sm = code.removeprefix("SR_BACKEND_FAILURE").lstrip("_") or arg[0]
        reason = arg[1] or arg[2] or "no reason given"
        return f"pool {pool}: a storage repository failed (SM {sm}): {reason}", True
    if code == "OTHER_OPERATION_IN_PROGRESS":
        return f"pool {pool}: {arg[0]} {arg[1]} is busy with {arg[2]}", True
    if code == "HANDLE_INVALID":
        return f"pool {pool}: the {arg[0]} is gone", False
    if code == "UUID_INVALID":
        return f"pool {pool}: no {arg[0]} with UUID {arg[1]}", False
    if code == "EVENTS_LOST":
        return f"pool {pool}: events were lost; everything is read again", True
    if code == "SESSION_INVALID":
        return f"pool {pool}: the session ended (expired or toolstack restarted)", True
    detail = ", ".join(p)
    return f"pool {pool}: XAPI failed with {code}" + (f" ({detail})" if detail else ""), False


def from_failure(description: Sequence[Any], pool: str) -> XapiError:
    """The Vauban error for XAPI's ErrorDescription `description` on `pool`."""
    parts = [str(d) for d in description] or ["INTERNAL_ERROR"]
    code, params = parts[0], parts[1:]
    message, retryable = _describe(code, params, pool)
    kind = {"SESSION_INVALID": SessionInvalid, "EVENTS_LOST": EventsLost}.get(code, XapiError)
    return kind(message, code=code, params=params, retryable=retryable)


def parse_result(answer: Any, pool: str) -> Any:
    """The `Value` of a successful XAPI answer; the mapped XapiError of a failure.

    An answer that is not an XAPI result struct raises XapiError (retryable: the host
    answered something else, e.g. during a toolstack restart).
    """
    if not isinstance(answer, dict) or "Status" not in answer:
        raise XapiError(f"pool {pool}: answer without a Status: not XAPI", retryable=True)
    if answer["Status"] == "Success" and "Value" in answer:
        return answer["Value"]
    description = answer.get("ErrorDescription")
    if answer["Status"] == "Failure" and isinstance(description, list):
        raise from_failure(description, pool)
    raise XapiError(f"pool {pool}: malformed XAPI answer (Status {answer['Status']!r})",
                    retryable=True)
