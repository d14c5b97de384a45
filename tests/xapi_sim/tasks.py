"""`Async.<Class>.<method>` as xapi runs it: a task record made at once, the work done
in a thread of the simulator, the task finished with its result or error.

Task fields as xapi's (`taskHelper.ml`): `status` pending → success | failure |
cancelled, `progress` 0.0 → 1.0, `result` a string holding an XML-RPC `<value>` (even
over JSON-RPC; "" for a void result), `error_info` `[CODE, param…]`, `created`,
`finished`, `resident_on` the master. Tasks are never collected: the client destroys
them (`task.destroy`). Test switches (Faults): a method's tasks held until released; the
next call or task of a method failed with a given ErrorDescription; a task asked to
cancel ends `cancelled` with `TASK_CANCELLED [task]`. A toolstack restart makes tasks
vanish: their work is dropped.
"""

from __future__ import annotations

import datetime
import threading
import xml.sax.saxutils
import xmlrpc.client
from typing import Any

from tests.xapi_sim import devices
from tests.xapi_sim.lifecycle import TaskGone
from tests.xapi_sim.model import Session, Store
from tests.xapi_sim.wire import XapiFault, _for_xmlrpc

TASK_METHODS = ("task.cancel", "task.destroy")


def list_methods() -> list[str]:
    """The changing methods, each also as `Async.`, and the task methods."""
    names = sorted(devices.METHODS)
    return [*names, *(f"Async.{n}" for n in names), *TASK_METHODS]


def _now() -> xmlrpc.client.DateTime:
    return xmlrpc.client.DateTime(datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H:%M:%SZ"))


def result_value(value: Any) -> str:
    """`value` as a task's `result`: one XML-RPC `<value>` element ("" for void); a
    string untyped (`<value>OpaqueRef:…</value>`), as xapi's own writer does."""
    if value in ("", None):
        return ""
    if isinstance(value, str):
        return f"<value>{xml.sax.saxutils.escape(value)}</value>"
    body = xmlrpc.client.dumps((_for_xmlrpc(value),))  # <params><param><value>…
    start, end = body.index("<value>"), body.rindex("</value>") + len("</value>")
    return body[start:end].replace("\n", "")


def fail_next(store: Store, method: str) -> None:
    """The failure a test asked for on the next call or task of `method`, if any."""
    with store.cond:
        description = store.faults.fail_next.pop(method, None)
    if description is not None:
        raise XapiFault(*description)


def run_sync(store: Store, sess: Session, method: str, args: list[Any]) -> Any:
    """A plain (synchronous) call of a changing method or a task method."""
    if method in TASK_METHODS:
        return _task_call(store, sess, method, args)
    fail_next(store, method)
    return devices.METHODS[method](store, sess, args, None)


def start(store: Store, sess: Session, method: str, args: list[Any]) -> str:
    """`Async.<method>(args)`: a pending task's ref, the work started in a thread."""
    fn = devices.METHODS.get(method)
    if fn is None:
        raise XapiFault("MESSAGE_METHOD_UNKNOWN", f"Async.{method}")
    with store.cond:
        task = store.add("task", {"name_label": f"Async.{method}", "created": _now(),
                                  "resident_on": store.pool().fields["master"]})
        ref = sess.ref(("task", task))
    threading.Thread(target=_work, args=(store, sess, method, args, task),
                     name=f"xapi-sim-task-{method}", daemon=True).start()
    return ref


def _work(store: Store, sess: Session, method: str, args: list[Any], task: str) -> None:
    key = ("task", task)
    faults = store.faults
    with store.cond:  # a held method waits for release, a vanished or cancelled task
        store.cond.wait_for(lambda: method not in faults.held or key not in store.objects
                            or task in faults.cancelled)
        if key not in store.objects:
            return
        if task in faults.cancelled:
            _finish(store, sess, task, "cancelled", "", ["TASK_CANCELLED", sess.ref(key)])
            return
        store.modify("task", task, progress=0.5)
    try:
        fail_next(store, method)
        value = devices.METHODS[method](store, sess, args, task)
    except TaskGone:
        return
    except XapiFault as fault:
        _finish(store, sess, task, "failure", "", fault.description)
        return
    except Exception as e:  # noqa: BLE001 - a bug of the sim fails the task, visibly
        _finish(store, sess, task, "failure", "", ["INTERNAL_ERROR", repr(e)])
        return
    _finish(store, sess, task, "success", result_value(value), [])


def _finish(store: Store, sess: Session, task: str, status: str, result: str,
            error_info: list[str]) -> None:
    with store.cond:
        if ("task", task) not in store.objects:  # destroyed or vanished meanwhile
            return
        if status == "failure" and error_info[:1] == ["TASK_CANCELLED"]:
            status = "cancelled"
        store.modify("task", task, status=status, progress=1.0, result=result,
                     error_info=list(error_info), finished=_now())
        store.faults.cancelled.discard(task)


def _task_call(store: Store, sess: Session, method: str, args: list[Any]) -> str:
    if len(args) != 1:
        raise XapiFault("MESSAGE_PARAMETER_COUNT_MISMATCH", method, "2", str(len(args) + 1))
    with store.cond:
        task = store.resolve(sess, "task", args[0])
        if method == "task.destroy":
            store.remove("task", task.uuid)
            store.faults.cancelled.discard(task.uuid)
        elif task.fields["status"] == "pending":
            store.faults.cancelled.add(task.uuid)
            store.cond.notify_all()
    return ""


def hold(store: Store, method: str) -> None:
    """Tasks of `method` wait (before doing anything) until `release(method)`."""
    with store.cond:
        store.faults.held.add(method)


def release(store: Store, method: str) -> None:
    with store.cond:
        store.faults.held.discard(method)
        store.cond.notify_all()


def wait_tasks(store: Store, method: str, count: int, limit: float) -> bool:
    """Wait until `count` pending tasks of `method` exist; whether they did."""
    def pending() -> bool:
        return sum(1 for t in store.live("task") if t.fields["name_label"] == f"Async.{method}"
                   and t.fields["status"] == "pending") >= count
    with store.cond:
        return store.cond.wait_for(pending, limit)
