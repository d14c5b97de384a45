"""The one error type of every driver family: it says whether trying again may help.

Each family's error (HypervisorError, StorageError, NetworkError, GpuError,
FirewallError) is a subclass, so the agent decides about retries in one place
(`agent.retry`) without knowing which family failed.
"""

from __future__ import annotations


class DriverError(Exception):
    """A driver operation failed.

    `retryable`: the same request may succeed later without anyone changing it
    (a cluster briefly unreachable, a guest slow to let go of a disk). Not
    retryable: it fails the same way until the request or the host changes.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def is_retryable(exc: BaseException) -> bool:
    """Whether `exc` says trying again may help; errors of no driver never do."""
    return isinstance(exc, DriverError) and exc.retryable
