"""The simulated pool's objects, sessions and per-session opaque refs.

Objects are kept by (class, uuid); a reference field holds the target's uuid. By default
each session sees every object under a ref of its own (`OpaqueRef:<random uuid>`), made
the first time that session meets it: stricter than real XAPI, whose refs outlive
sessions, so that a client keying anything on refs across sessions fails here. With
`stable_refs` every session shares one ref per object, as real XAPI. Every change bumps
one generation counter, which `event.from` tokens count in (see events.py).
"""

from __future__ import annotations

import threading
import uuid as uuidlib
import xmlrpc.client
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.xapi_sim.wire import XapiFault

NULL_REF = "OpaqueRef:NULL"
GiB = 1024**3

# reference fields per class: field -> target class
REF_FIELDS: dict[str, dict[str, str]] = {
    "pool": {"master": "host", "default_SR": "SR"},
    "host": {"metrics": "host_metrics"},
    "host_metrics": {},
    "SR": {},
    "network": {},
    "VM": {"resident_on": "host"},
    "VDI": {"SR": "SR"},
    "VBD": {"VM": "VM", "VDI": "VDI"},
    "VIF": {"VM": "VM", "network": "network"},
    "SM": {},
    "task": {"resident_on": "host"},
    "console": {"VM": "VM"},
}
# set-of-refs fields computed from the other side: field -> (class, its ref field)
BACK_REFS: dict[str, dict[str, tuple[str, str]]] = {
    "host": {"resident_VMs": ("VM", "resident_on")},
    "SR": {"VDIs": ("VDI", "SR")},
    "VM": {"VBDs": ("VBD", "VM"), "VIFs": ("VIF", "VM"), "consoles": ("console", "VM")},
    "VDI": {"VBDs": ("VBD", "VDI")},
    "network": {"VIFs": ("VIF", "network")},
}
_EPOCH = xmlrpc.client.DateTime("19700101T00:00:00Z")
DEFAULTS: dict[str, dict[str, Any]] = {
    "pool": {"name_label": "", "name_description": "", "master": "", "default_SR": "",
             "ha_enabled": False, "other_config": {}},
    "host": {"name_label": "", "name_description": "", "address": "", "enabled": True,
             "API_version_major": 2, "API_version_minor": 21, "hostname": "",
             "software_version": {"product_version": "8.3.0", "xapi": "25.6"},
             "cpu_info": {"cpu_count": "4"}, "memory_overhead": 0, "metrics": "",
             "other_config": {}},
    "host_metrics": {"memory_total": 32 * GiB, "memory_free": 24 * GiB, "live": True,
                     "other_config": {}},
    "SR": {"name_label": "", "name_description": "", "type": "ext", "content_type": "user",
           "shared": False, "physical_size": 0, "physical_utilisation": 0,
           "virtual_allocation": 0, "other_config": {}, "sm_config": {}},
    "network": {"name_label": "", "name_description": "", "bridge": "", "MTU": 1500,
                "other_config": {}},
    "VM": {"name_label": "", "name_description": "", "power_state": "Halted",
           "is_a_template": False, "is_a_snapshot": False, "is_control_domain": False,
           "memory_static_max": GiB, "memory_dynamic_max": GiB, "memory_dynamic_min": GiB,
           "memory_static_min": GiB, "VCPUs_max": 1, "VCPUs_at_startup": 1,
           "resident_on": "", "other_config": {}, "HVM_boot_params": {},
           "platform": {}},
    "VDI": {"name_label": "", "name_description": "", "SR": "", "virtual_size": 0,
            "physical_utilisation": 0, "type": "user", "sharable": False,
            "read_only": False, "other_config": {}, "sm_config": {}},
    "VBD": {"VM": "", "VDI": "", "userdevice": "", "device": "", "bootable": False,
            "mode": "RW", "type": "Disk", "empty": False, "currently_attached": False,
            "other_config": {}},
    "VIF": {"VM": "", "network": "", "device": "", "MAC": "", "MTU": 1500,
            "currently_attached": False, "other_config": {}},
    "SM": {"name_label": "", "type": "", "capabilities": [], "features": {}},
    "task": {"name_label": "", "name_description": "", "status": "pending", "progress": 0.0,
             "result": "", "error_info": [], "created": _EPOCH, "finished": _EPOCH,
             "resident_on": "", "other_config": {}},
    "console": {"protocol": "rfb", "location": "", "VM": "", "other_config": {}},
}
CLASSES = tuple(DEFAULTS)
_BY_LOWER = {c.lower(): c for c in CLASSES}


def class_named(name: str) -> str | None:
    """The XAPI class spelled `name` in any case (events spell them lower-case)."""
    return _BY_LOWER.get(name.lower())


@dataclass
class Faults:
    """What tests switch on in the pool's behaviour (read and changed under `cond`)."""

    held: set[str] = field(default_factory=set)  # methods whose tasks wait to be released
    fail_next: dict[str, list[str]] = field(default_factory=dict)  # method -> ErrorDescription
    guest_ignores_shutdown: bool = False  # clean_shutdown waits for a hard_shutdown
    host_memory: int = 16 * GiB  # each host's total memory
    cancelled: set[str] = field(default_factory=set)  # uuids of tasks asked to cancel


@dataclass
class Obj:
    """One object: its fields (references as target uuids) and its generations."""

    cls: str
    uuid: str
    fields: dict[str, Any]
    created: int
    modified: int
    deleted: int = 0


@dataclass
class Session:
    """A logged-in session and the refs it was shown."""

    handle: str
    username: str
    originator: str
    refs: dict[tuple[str, str], str] = field(default_factory=dict)
    keys: dict[str, tuple[str, str]] = field(default_factory=dict)

    def ref(self, key: tuple[str, str]) -> str:
        """This session's ref for object `key`, made on first sight."""
        if key not in self.refs:
            ref = f"OpaqueRef:{uuidlib.uuid4()}"
            self.refs[key], self.keys[ref] = ref, key
        return self.refs[key]


class Store:
    """All state of one simulated pool, guarded by one condition variable.

    Every mutation bumps `gen` and wakes the `event.from` calls waiting on `cond`.
    """

    def __init__(self, username: str, password: str, stable_refs: bool = False) -> None:
        self.cond = threading.Condition()
        # stable_refs: one ref per object for its life, as real xapi (Xen Orchestra's
        # client relies on it); else each session gets refs of its own (stricter)
        self.stable: Session | None = Session("", "", "") if stable_refs else None
        self.gen = 0
        self.objects: dict[tuple[str, str], Obj] = {}
        self.tombstones: list[Obj] = []
        self.sessions: dict[str, Session] = {}
        self.credentials = (username, password)
        self.logins: list[tuple[str, str]] = []  # (username, originator) of each login
        self.events_lost_next = False
        self.calls: Counter[str] = Counter()  # method name -> calls answered
        # host uuid -> the PEM its listener presents (host.get_server_certificate)
        self.certificates: dict[str, str] = {}
        # event.from calls blocked now; `waiting` (not `cond`, or blocked calls would wake
        # each other) is notified when the count changes, for tests to wait on
        self.waiters = 0
        self.waiting = threading.Condition()
        self.faults = Faults()
        self.backend: Any = None  # runs guests (lifecycle.Backend); set by the pool
        self.folder: Path | None = None  # where VDI contents live (disks.vdi_file)
        # (host uuid, console uuid) -> the console's location; None: no consoles made
        self.console_location: Callable[[str, str], str] | None = None

    # --- changes, made by the tests and by calls -------------------------------------

    def _touch_targets(self, obj: Obj, fields: dict[str, Any]) -> None:
        """A `mod` on each object a changed ref field of `obj` names (before or after):
        its computed set field (host.resident_VMs, SR.VDIs) changed with it, as in xapi."""
        for target, backs in BACK_REFS.items():
            for other_cls, name in backs.values():
                if other_cls != obj.cls or not (obj.deleted or name in fields):
                    continue
                for tid in {fields.get(name), obj.fields.get(name)} - {None, ""}:
                    other = self.objects.get((target, str(tid)))
                    if other is not None:
                        other.modified = self.gen

    def add(self, cls: str, fields: dict[str, Any], uuid: str | None = None) -> str:
        """Create an object of `cls` (defaults filled in); return its uuid."""
        with self.cond:
            self.gen += 1
            oid = uuid or str(uuidlib.uuid4())
            record = {**DEFAULTS[cls], **fields}
            obj = self.objects[(cls, oid)] = Obj(cls, oid, record, self.gen, self.gen)
            self._touch_targets(obj, record)
            self.cond.notify_all()
            return oid

    def modify(self, cls: str, uuid: str, **fields: Any) -> None:
        """Change fields of a live object."""
        with self.cond:
            obj = self.objects[(cls, uuid)]
            self.gen += 1
            self._touch_targets(obj, fields)
            obj.fields.update(fields)
            obj.modified = self.gen
            self.cond.notify_all()

    def remove(self, cls: str, uuid: str) -> None:
        """Destroy a live object (it leaves a tombstone for `del` events)."""
        with self.cond:
            obj = self.objects.pop((cls, uuid))
            self.gen += 1
            obj.deleted = self.gen
            self._touch_targets(obj, {})
            self.tombstones.append(obj)
            self.cond.notify_all()

    def vanish(self, cls: str, uuid: str) -> None:
        """Forget an object without an event, as tasks vanish when xapi restarts."""
        with self.cond:
            del self.objects[(cls, uuid)]

    def touch(self, key: tuple[str, str]) -> int:
        """A `mod` event on `key` without a change (event.inject); the generation before."""
        with self.cond:
            self.gen += 1
            self.objects[key].modified = self.gen
            self.cond.notify_all()
            return self.gen - 1

    def expire_sessions(self) -> None:
        """Destroy every session, as the session GC or a toolstack restart does."""
        with self.cond:
            self.sessions.clear()
            self.cond.notify_all()

    def lose_events(self) -> None:
        """The next (or the blocked) event.from fails with EVENTS_LOST."""
        with self.cond:
            self.events_lost_next = True
            self.cond.notify_all()

    def live(self, cls: str) -> list[Obj]:
        """The live objects of `cls`."""
        return [o for (c, _), o in self.objects.items() if c == cls]

    def pool(self) -> Obj:
        """The pool object (there is exactly one)."""
        return self.live("pool")[0]

    # --- sessions and refs -----------------------------------------------------------

    def login(self, username: str, password: str, originator: str) -> str:
        """A new session handle; SESSION_AUTHENTICATION_FAILED on wrong credentials."""
        with self.cond:
            if (username, password) != self.credentials:
                raise XapiFault("SESSION_AUTHENTICATION_FAILED")
            handle = f"OpaqueRef:{uuidlib.uuid4()}"
            sess = Session(handle, username, originator)
            if self.stable is not None:
                sess.refs, sess.keys = self.stable.refs, self.stable.keys
            self.sessions[handle] = sess
            self.logins.append((username, originator))
            return handle

    def session(self, handle: Any) -> Session:
        """The live session `handle`; SESSION_INVALID otherwise."""
        sess = self.sessions.get(handle) if isinstance(handle, str) else None
        if sess is None:
            raise XapiFault("SESSION_INVALID", str(handle))
        return sess

    def resolve(self, sess: Session, cls: str, ref: Any) -> Obj:
        """The live object of `cls` that `ref` names in `sess`; HANDLE_INVALID otherwise."""
        key = sess.keys.get(ref) if isinstance(ref, str) else None
        obj = self.objects.get(key) if key is not None and key[0] == cls else None
        if obj is None:
            raise XapiFault("HANDLE_INVALID", cls, str(ref))
        return obj

    def record(self, sess: Session, obj: Obj) -> dict[str, Any]:
        """`obj` as `get_record` returns it to `sess`: refs in that session's names."""
        out = {"uuid": obj.uuid, **obj.fields}
        for name, target in REF_FIELDS[obj.cls].items():
            tid = obj.fields.get(name) or ""
            out[name] = sess.ref((target, tid)) if (target, tid) in self.objects else NULL_REF
        for name, (other, back) in BACK_REFS.get(obj.cls, {}).items():
            out[name] = [sess.ref((other, o.uuid)) for o in self.live(other)
                         if o.fields.get(back) == obj.uuid]
        return out
