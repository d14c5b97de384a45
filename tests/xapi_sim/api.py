"""The XAPI methods the simulator answers, whatever wire they came by.

`call` takes the method name and params of one request and returns its value or raises
XapiFault; `master_address` is None when the answering host is the master, else the
master's address (a member refuses logins with HOST_IS_SLAVE naming it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.xapi_sim import devices, disks, events, tasks
from tests.xapi_sim.model import CLASSES, REF_FIELDS, Session, Store, class_named
from tests.xapi_sim.wire import XapiFault

_PER_CLASS = ("get_all_records", "get_all", "get_record", "get_by_uuid", "get_uuid")
_WRITES = ("VDI.create", "host.get_server_certificate", *disks.CALLS)
_OTHERS = ("session.login_with_password", "session.logout", "system.listMethods",
           "event.from", "event.inject")


def list_methods() -> list[str]:
    """Every method this simulator answers (`system.listMethods`)."""
    per_class = [f"{c}.{m}" for c in CLASSES for m in _PER_CLASS]
    return [*_OTHERS, *per_class, *_WRITES, *tasks.list_methods()]


def _arity(method: str, params: list[Any], expected: int) -> None:
    if len(params) != expected:
        raise XapiFault("MESSAGE_PARAMETER_COUNT_MISMATCH", method, str(expected),
                        str(len(params)))


def _login(store: Store, params: list[Any], master_address: str | None) -> str:
    if not 2 <= len(params) <= 4:
        raise XapiFault("MESSAGE_PARAMETER_COUNT_MISMATCH", "session.login_with_password",
                        "4", str(len(params)))
    if master_address is not None:
        raise XapiFault("HOST_IS_SLAVE", master_address)
    originator = str(params[3]) if len(params) == 4 else ""
    return store.login(str(params[0]), str(params[1]), originator)


def _class_call(store: Store, sess: Session, cls: str, name: str,
                args: list[Any]) -> Any:
    method = f"{cls}.{name}"
    if name == "get_all_records":
        _arity(method, args, 0)
        return {sess.ref((cls, o.uuid)): store.record(sess, o) for o in store.live(cls)}
    if name == "get_all":
        _arity(method, args, 0)
        return [sess.ref((cls, o.uuid)) for o in store.live(cls)]
    if name == "get_by_uuid":
        _arity(method, args, 1)
        if (cls, args[0]) not in store.objects:
            raise XapiFault("UUID_INVALID", cls, str(args[0]))
        return sess.ref((cls, args[0]))
    _arity(method, args, 1)
    obj = store.resolve(sess, cls, args[0])
    if name == "get_record":
        return store.record(sess, obj)
    if name == "get_uuid":
        return obj.uuid
    raise XapiFault("MESSAGE_METHOD_UNKNOWN", method)


def _int64(value: Any, name: str) -> int:
    """An XAPI int argument: a decimal string in XML-RPC, a number in JSON-RPC."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise XapiFault("FIELD_TYPE_ERROR", name)
    try:
        return int(value)
    except ValueError as e:
        raise XapiFault("FIELD_TYPE_ERROR", name) from e


def _vdi_create(store: Store, sess: Session, args: list[Any]) -> str:
    _arity("VDI.create", args, 1)
    rec = args[0]
    if not isinstance(rec, dict):
        raise XapiFault("FIELD_TYPE_ERROR", "args")
    sr = store.resolve(sess, "SR", rec.get("SR"))
    fields = {"name_label": str(rec.get("name_label", "")), "SR": sr.uuid,
              "virtual_size": _int64(rec.get("virtual_size"), "virtual_size"),
              "type": str(rec.get("type", "user")), "sharable": bool(rec.get("sharable")),
              "read_only": bool(rec.get("read_only")),
              "other_config": dict(rec.get("other_config") or {})}
    return sess.ref(("VDI", store.add("VDI", fields)))


def _server_certificate(store: Store, sess: Session, args: list[Any]) -> str:
    _arity("host.get_server_certificate", args, 1)
    host = store.resolve(sess, "host", args[0])
    return store.certificates.get(host.uuid, "")


# VDI.destroy, task.destroy: devices.METHODS and tasks.TASK_METHODS answer them first
_WRITE_CALLS: dict[str, Callable[[Store, Session, list[Any]], Any]] = {
    "VDI.create": _vdi_create,
    "host.get_server_certificate": _server_certificate, **disks.CALLS,
}


def call(store: Store, method: str, params: list[Any], master_address: str | None) -> Any:
    """The value of `method(*params)`; XapiFault as xapi would fail it."""
    with store.cond:
        store.calls[method] += 1
    if method == "session.login_with_password":
        return _login(store, params, master_address)
    if method == "system.listMethods":
        return list_methods()
    if not params:
        raise XapiFault("MESSAGE_PARAMETER_COUNT_MISMATCH", method, "1", "0")
    handle, args = params[0], params[1:]
    if method == "session.logout":
        with store.cond:
            store.session(handle)
            store.sessions.pop(handle, None)
        return ""
    if method == "event.from":
        _arity(method, args, 3)
        return events.event_from(store, handle, *args)
    if method == "event.inject":
        _arity(method, args, 2)
        return events.event_inject(store, handle, *args)
    if method.startswith("Async.") or method in devices.METHODS or method in tasks.TASK_METHODS:
        with store.cond:
            sess = store.session(handle)
        if method.startswith("Async."):
            return tasks.start(store, sess, method.removeprefix("Async."), args)
        return tasks.run_sync(store, sess, method, args)
    with store.cond:
        sess = store.session(handle)
        tasks.fail_next(store, method)  # reads too: a test may fail any call once
        if method in _WRITE_CALLS:
            return _WRITE_CALLS[method](store, sess, args)
        cls_name, _, name = method.partition(".")
        cls = class_named(cls_name)
        if cls is None or cls != cls_name or name not in _PER_CLASS:
            raise XapiFault("MESSAGE_METHOD_UNKNOWN", method)
        assert cls in REF_FIELDS
        return _class_call(store, sess, cls, name, args)
