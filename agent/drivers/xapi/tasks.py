"""Calls to a pool, plain and as XAPI tasks, shared by the pool's drivers.

`PoolOps.run("VM.start", ref, False, False)` calls `Async.VM.start`, which answers a task
ref at once, then waits for the task to end in the pool's event cache (a condition
variable the event loop notifies: no polling), decodes its `result` (a string holding
one XML-RPC `<value>`, even over JSON-RPC) or maps its `error_info` like a failed call,
and always destroys the task (xapi never collects tasks for its clients). A task that
disappears without ending (the toolstack restarted: tasks vanish with it) raises a
retryable HypervisorError, "task lost". One PoolClient is shared under a lock, one call
at a time (XenAPI's proxy is not thread-safe); waits for tasks run without it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import xmlrpc.client
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from xml.parsers.expat import ExpatError

from agent.drivers.xapi.errors import XapiError, from_failure
from agent.drivers.xapi.events import PoolCache
from agent.drivers.xapi.pool import PoolClient

log = logging.getLogger(__name__)

TASK_LIMIT = 3600.0  # seconds a task may run before the wait gives up (retryable)
LOST = "task lost: the pool's toolstack restarted"


@dataclass(frozen=True)
class Task:
    """A task we started: its ref (in the session of then), UUID, and the number of the
    last full read of the cache begun before it existed."""

    method: str
    ref: str
    uuid: str
    baseline: int


class TaskPending(XapiError):
    """The task did not end within the time waited; it goes on running."""


class TaskLost(XapiError):
    """The task vanished before it ended (a toolstack restart); retryable."""

    def __init__(self, pool: str, method: str) -> None:
        super().__init__(f"pool {pool}: {method}: {LOST}", retryable=True)


def decode_result(result: Any) -> Any:
    """The value a task's `result` holds: "" → None, else its one XML-RPC `<value>`."""
    if not isinstance(result, str) or not result.strip():
        return None
    wrapped = f"<methodResponse><params><param>{result}</param></params></methodResponse>"
    try:
        (value,), _ = xmlrpc.client.loads(wrapped)
    except (ExpatError, xmlrpc.client.ResponseError, ValueError, TypeError) as e:
        raise XapiError(f"task result is not an XML-RPC value: {result[:200]!r}") from e
    return value


def task_outcome(record: dict[str, Any], pool: str) -> tuple[bool, Any]:
    """(ended, value) of a task record; raises the mapped XapiError of a failed task."""
    status = record.get("status")
    if status == "success":
        return True, decode_result(record.get("result"))
    if status in ("failure", "cancelled"):
        info = record.get("error_info") or []
        raise from_failure(info if info else ["TASK_CANCELLED" if status == "cancelled"
                                              else "INTERNAL_ERROR"], pool)
    return False, None


class PoolOps:
    """Calls and tasks on one pool: a PoolClient (shared, locked) and the pool's cache."""

    def __init__(self, client: PoolClient, cache: PoolCache,
                 task_limit: float = TASK_LIMIT) -> None:
        self.client, self.cache = client, cache
        self.task_limit = task_limit
        self._lock = threading.Lock()

    @property
    def label(self) -> str:
        return self.client.label

    def call(self, method: str, *args: Any) -> Any:
        """The value of `method(session, *args)`; XapiError (mapped) on failure. A ref
        refused because the session was replaced during the call (refs are per session:
        a toolstack restart or expiry) is a retryable error, not "gone"."""
        with self._lock:
            logins = self.client.logins
            try:
                return self.client.call(method, *args)
            except XapiError as e:
                if e.code != "HANDLE_INVALID" or self.client.logins == logins:
                    raise
                raise XapiError(f"pool {self.label}: {method}: the session was replaced "
                                "meanwhile (its refs with it): try again", code=e.code,
                                params=e.params, retryable=True) from e

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[PoolClient]:
        """The client itself, for a few calls no one else's come between."""
        with self._lock:
            yield self.client

    def ref(self, cls: str, uuid: str) -> str:
        """This session's ref of `cls` object `uuid` (refs are never kept across calls:
        a new session has new ones)."""
        return str(self.call(f"{cls}.get_by_uuid", uuid))

    def uuid_of_new(self, cls: str, ref: str) -> str:
        """The UUID of `cls` object `ref` this session just made. When it cannot be read
        the object is destroyed by that ref (best effort: a failure is logged, never
        raised over the first) and the error raised: nothing could ever find it again."""
        try:
            return str(self.call(f"{cls}.get_uuid", ref))
        except BaseException:
            try:
                self.call(f"{cls}.destroy", ref)
            except Exception as e:  # the pool is likely away: say what may be left
                log.warning("pool %s: a new %s whose UUID could not be read may be left "
                            "behind: %s", self.label, cls, e)
            raise

    def run(self, method: str, *args: Any) -> Any:
        """`Async.<method>(*args)` to its end: its decoded result. Raises the task's
        mapped error, TaskLost (retryable) when it vanished, XapiError (retryable) when
        it ran past `task_limit`. The task is destroyed in every case."""
        task = self.submit(method, *args)
        try:
            return self.wait(task, self.task_limit)
        finally:
            self.destroy(task)

    def submit(self, method: str, *args: Any) -> Task:
        """`Async.<method>(*args)` started: its task (the caller destroys it, in a
        `finally`). TaskLost when the task is gone before its UUID could be read."""
        with self._lock:
            ref = self.client.call(f"Async.{method}", *args)
            baseline = self.cache.reads_begun  # a full read begun later must hold the task
            try:
                uuid = str(self.client.call("task.get_uuid", ref))
            except XapiError as e:  # gone already: a restart (new session, new refs)
                if e.code in ("HANDLE_INVALID", "SESSION_INVALID"):
                    raise TaskLost(self.label, method) from e
                raise
        return Task(method, ref, uuid, baseline)

    def wait(self, task: Task, limit: float) -> Any:
        """Wait (on the cache's condition) up to `limit` seconds for `task` to end: its
        decoded result. Raises its mapped error, TaskLost, or TaskPending when it did not
        end in time (it goes on running)."""
        outcome: list[Any] = []

        def ended(cache: PoolCache) -> bool:
            record = cache.get("task", task.uuid)
            if record is None:
                # gone from a full read that began after the task existed: it vanished
                if cache.reads_complete_from > task.baseline or task.uuid in cache.deleted_tasks:
                    raise TaskLost(self.label, task.method)
                return False
            done, value = task_outcome(record, self.label)
            if done:
                outcome.append(value)
            return done

        if not self.cache.wait_for(ended, limit):
            raise TaskPending(f"pool {self.label}: {task.method} did not end within "
                              f"{limit:.0f} s", retryable=True)
        return outcome[0]

    def destroy(self, task: Task) -> None:
        """task.destroy, ignoring a task already gone (HANDLE_INVALID, a new session)."""
        self._destroy(task.ref)

    def _destroy(self, task_ref: str) -> None:
        """task.destroy, ignoring a task already gone (HANDLE_INVALID, a new session)."""
        try:
            self.call("task.destroy", task_ref)
        except XapiError as e:
            if e.code not in ("HANDLE_INVALID", "SESSION_INVALID"):
                log.warning("pool %s: task.destroy failed: %s", self.label, e)
