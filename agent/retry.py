"""The agent's one retry policy, and the one ledger of what failed on this node.

Every failed action of the agent (a VM, network, firewall, volume or image
action) is recorded here under a key naming what was attempted, with the
*request* it tried to carry out. A retryable failure is tried again after an
exponential, capped, jittered delay; once it has lasted `give_up_after_s` (or
at once, when not retryable) it is *final*: the same request is not tried
again, and only a changed request (or an agent restart) tries afresh. Every
entry, final or not, is reported to the controller in the node's status, and
reported the same until it fails anew (its next try's time is fixed when it fails).
An entry is forgotten when its action succeeds or no longer applies (its object left
this node's desired state): the agent's other modules say when.

Time and randomness are injected, so the policy is deterministic under test.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from agent.errors import is_retryable
from agent.protocol import FailureKind, NodeFailure


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, capped, with a point after which we give up."""

    base_s: float = 5.0  # delay after the first failure (before jitter)
    cap_s: float = 120.0  # no delay is longer than this
    give_up_after_s: float = 300.0  # a retryable failure lasting longer is final
    jitter: float = 0.5  # a delay is drawn from [d * (1 - jitter), d]

    def delay(self, attempts: int, rand: Callable[[], float]) -> float:
        """Seconds to wait after the `attempts`-th failure in a row (attempts >= 1).

        `rand` returns a float in [0, 1); agents failing together thus spread out.
        """
        exp = min(self.cap_s, self.base_s * 2.0 ** max(0, attempts - 1))
        return exp * (1.0 - self.jitter * rand())

    def is_final(self, retryable: bool, since: float, now: float) -> bool:
        """A failure not worth trying again for the same request."""
        return not retryable or now - since >= self.give_up_after_s


CONTROLLER_RETRY_FLOOR_S = 10.0  # the longest wait before asking again, in a small region


def controller_retry_delay(failures: int, report_interval_s: float | None,
                           rand: Callable[[], float]) -> float:
    """Seconds to wait before asking the controller again after `failures` (>= 1) failed
    requests in a row: from half a second, doubling, up to the report interval the
    controller last named (at least CONTROLLER_RETRY_FLOOR_S), jittered. A large region
    names a long interval, so its thousands of agents, all failing when the controller
    restarts or is overloaded, come back spread over that interval rather than over 10 s."""
    cap = max(CONTROLLER_RETRY_FLOOR_S, report_interval_s or 0.0)
    policy = RetryPolicy(base_s=0.5, cap_s=cap, give_up_after_s=float("inf"))
    return policy.delay(failures, rand)


Key = tuple[str, str, str]  # (kind, object id, action)


@dataclass(frozen=True)
class Entry:
    """One failure: what failed, for which request, since when, how often."""

    kind: FailureKind
    object_id: str
    action: str
    request: Hashable  # what was asked; a different request is tried afresh
    message: str
    retryable: bool
    attempts: int
    since: float  # monotonic time of the first failure of this request
    since_wall: datetime
    next_at: float  # monotonic time before which it is not tried again
    next_at_wall: datetime  # the same time, as reported (fixed when it failed)
    final: bool
    seq: int | None = None  # the controller's number of the request: a VM's power_seq,
    #                         the desired generation a volume's request first failed in


class FailureLedger:
    """Failures by (kind, object id, action); thread-safe."""

    def __init__(self, policy: RetryPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] = random.random,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.policy = policy or RetryPolicy()
        self._clock = clock
        self._rand = rand
        self._wall = wall
        self._lock = threading.Lock()
        self._entries: dict[Key, Entry] = {}

    def may_try(self, kind: FailureKind, object_id: str, action: str,
                request: Hashable) -> bool:
        """Whether the request may be attempted now: never failed, changed since it
        failed, or failed retryably and its delay has passed."""
        with self._lock:
            e = self._entries.get((kind, object_id, action))
        if e is None or e.request != request:
            return True
        return not e.final and self._clock() >= e.next_at

    def failed(self, kind: FailureKind, object_id: str, action: str, request: Hashable,
               exc: BaseException | str, retryable: bool | None = None,
               seq: int | None = None) -> Entry:
        """Record that the request failed with `exc`; the entry, final or not.

        `retryable` defaults to what `exc` says (`agent.errors.is_retryable`). `seq` is
        the controller's number of the request; a repeated failure of the same request
        keeps the number of its first failure.
        """
        if retryable is None:
            retryable = not isinstance(exc, str) and is_retryable(exc)
        now, wall, key = self._clock(), self._wall(), (kind, object_id, action)
        with self._lock:
            prior = self._entries.get(key)
            same = prior if prior is not None and prior.request == request else None
            delay = self.policy.delay(same.attempts + 1 if same else 1, self._rand)
            since = same.since if same else now
            entry = Entry(
                kind=kind, object_id=object_id, action=action, request=request,
                message=str(exc), retryable=retryable,
                attempts=same.attempts + 1 if same else 1, since=since,
                since_wall=same.since_wall if same else wall, next_at=now + delay,
                next_at_wall=wall + timedelta(seconds=delay),
                final=self.policy.is_final(retryable, since, now),
                seq=same.seq if same else seq)
            self._entries[key] = entry
        return entry

    def succeeded(self, kind: FailureKind, object_id: str, action: str) -> None:
        """The action worked: its failure, if any, is forgotten."""
        with self._lock:
            self._entries.pop((kind, object_id, action), None)

    def forget(self, kind: FailureKind, object_id: str) -> None:
        """Drop every failure of an object (it is gone, or no longer wanted)."""
        with self._lock:
            for key in [k for k in self._entries if k[:2] == (kind, object_id)]:
                del self._entries[key]

    def get(self, kind: FailureKind, object_id: str, action: str) -> Entry | None:
        with self._lock:
            return self._entries.get((kind, object_id, action))

    def of_kind(self, kind: FailureKind) -> list[Entry]:
        """The failures of every object of one kind, oldest first."""
        with self._lock:
            found = [e for k, e in self._entries.items() if k[0] == kind]
        return sorted(found, key=lambda e: e.since)

    def of(self, kind: FailureKind, object_id: str) -> list[Entry]:
        """The failures of one object, oldest first."""
        with self._lock:
            found = [e for k, e in self._entries.items() if k[:2] == (kind, object_id)]
        return sorted(found, key=lambda e: e.since)

    def report(self) -> list[NodeFailure]:
        """Every failure as the node reports it, oldest first; the same until one changes."""
        with self._lock:
            entries = sorted(self._entries.values(), key=lambda e: e.since)
        return [NodeFailure(
            kind=e.kind, object_id=e.object_id, action=e.action, message=e.message,
            retryable=e.retryable, final=e.final, since=e.since_wall, attempts=e.attempts,
            next_retry_at=None if e.final else e.next_at_wall,
        ) for e in entries]
