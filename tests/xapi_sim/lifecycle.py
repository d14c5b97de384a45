"""VM, VBD, VIF and VDI methods that change the pool, with xapi's power rules.

Each method is `fn(store, sess, args, task)` (`task`: the uuid of the task running it, or
None for a plain call) and takes the store's lock itself: what runs a guest (the
`Backend`) is called without the lock, so a slow backend never stalls the pool.
Power rules as xapi's `xapi_vm_lifecycle.ml`: a refused call raises `VM_BAD_POWER_STATE
[vm ref, expected (", "-joined, lower-case), actual (lower-case)]`. VDI content is not
kept here: VDIs are metadata only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from tests.xapi_sim.model import Obj, Session, Store
from tests.xapi_sim.wire import XapiFault

Method = Callable[[Store, Session, list[Any], "str | None"], Any]
RUNNING = ("Running", "Paused")  # states in which a VM holds memory on a host


class Backend(Protocol):
    """What runs the guests of the pool's VMs (in memory by default; a real Xen later)."""

    def start(self, vm_uuid: str, record: dict[str, Any], paused: bool) -> None:
        """Make the guest run (or paused); XapiFault when it cannot."""

    def shutdown(self, vm_uuid: str, hard: bool) -> None:
        """End the guest: asked nicely (`hard` False) or at once."""

    def reboot(self, vm_uuid: str) -> None:
        """Restart the guest at once."""

    def destroy(self, vm_uuid: str) -> None:
        """Forget whatever the backend keeps of a halted VM that is being destroyed."""


class MemoryBackend:
    """Guests that exist only as a set of running VM uuids."""

    def __init__(self) -> None:
        self.running: set[str] = set()

    def start(self, vm_uuid: str, record: dict[str, Any], paused: bool) -> None:
        self.running.add(vm_uuid)

    def shutdown(self, vm_uuid: str, hard: bool) -> None:
        self.running.discard(vm_uuid)

    def reboot(self, vm_uuid: str) -> None:
        pass

    def destroy(self, vm_uuid: str) -> None:
        self.running.discard(vm_uuid)


class TaskGone(Exception):
    """The task running this work vanished (toolstack restart): the work is dropped."""


def arity(method: str, args: list[Any], expected: int) -> None:
    if len(args) != expected:
        raise XapiFault("MESSAGE_PARAMETER_COUNT_MISMATCH", method, str(expected + 1),
                        str(len(args) + 1))


def int64(value: Any, name: str) -> int:
    """An XAPI int argument: a decimal string in XML-RPC, a number in JSON-RPC."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise XapiFault("FIELD_TYPE_ERROR", name)
    try:
        return int(value)
    except ValueError as e:
        raise XapiFault("FIELD_TYPE_ERROR", name) from e


def _power(sess: Session, vm: Obj, allowed: tuple[str, ...]) -> None:
    """VM_BAD_POWER_STATE unless `vm` is in one of `allowed` (xapi's spelling)."""
    actual = str(vm.fields["power_state"])
    if actual not in allowed:
        raise XapiFault("VM_BAD_POWER_STATE", sess.ref(("VM", vm.uuid)),
                        ", ".join(a.lower() for a in allowed), actual.lower())


def _vm(store: Store, sess: Session, ref: Any) -> Obj:
    vm = store.resolve(sess, "VM", ref)
    if vm.fields["is_control_domain"]:
        raise XapiFault("OPERATION_NOT_ALLOWED", "the control domain cannot be changed")
    return vm


def owned(store: Store, cls: str, vm_uuid: str) -> list[Obj]:
    """The VBDs or VIFs of VM `vm_uuid`."""
    return [o for o in store.live(cls) if o.fields["VM"] == vm_uuid]


def _attach(store: Store, vm_uuid: str, attached: bool) -> None:
    for cls in ("VBD", "VIF"):
        for obj in owned(store, cls, vm_uuid):
            store.modify(cls, obj.uuid, currently_attached=attached)


# --- VM: install from a template ------------------------------------------------------

def vdi_copy_fields(vdi: Obj, sr: str) -> dict[str, Any]:
    keep = ("name_label", "name_description", "virtual_size", "type", "sharable",
            "read_only", "other_config", "sm_config")
    fields = {k: vdi.fields[k] for k in keep}
    return {**fields, "SR": sr, "other_config": dict(vdi.fields["other_config"])}


def vm_clone(store: Store, sess: Session, args: list[Any], task: str | None) -> str:
    """VM.clone(vm, new_name): a halted copy, its disks cloned (is_a_template kept)."""
    arity("VM.clone", args, 2)
    with store.cond:
        src = _vm(store, sess, args[0])
        _power(sess, src, ("Halted",))
        fields = {**src.fields, "name_label": str(args[1]), "resident_on": "",
                  "other_config": dict(src.fields["other_config"])}
        new = store.add("VM", fields)
        for vbd in owned(store, "VBD", src.uuid):
            vdi = store.objects.get(("VDI", vbd.fields["VDI"]))
            copy = store.add("VDI", vdi_copy_fields(vdi, vdi.fields["SR"])) if vdi else ""
            store.add("VBD", {**vbd.fields, "VM": new, "VDI": copy,
                              "currently_attached": False})
        return sess.ref(("VM", new))


def vm_provision(store: Store, sess: Session, args: list[Any], task: str | None) -> str:
    """VM.provision(vm): the template's disks made (none here); no longer a template."""
    arity("VM.provision", args, 1)
    with store.cond:
        vm = _vm(store, sess, args[0])
        _power(sess, vm, ("Halted",))
        store.modify("VM", vm.uuid, is_a_template=False)
    return ""


# --- VM: fields -------------------------------------------------------------------------

def setter(field: str, halted: bool, convert: Callable[[Any], Any]) -> Method:
    def set_field(store: Store, sess: Session, args: list[Any], task: str | None) -> str:
        arity(f"VM.set_{field}", args, 2)
        with store.cond:
            vm = _vm(store, sess, args[0])
            if halted:
                _power(sess, vm, ("Halted",))
            store.modify("VM", vm.uuid, **{field: convert(args[1])})
        return ""
    return set_field


def vcpu_count(value: Any) -> int:
    n = int64(value, "value")
    if n < 1:
        raise XapiFault("VALUE_NOT_SUPPORTED", "VCPUs", str(n), "must be at least 1")
    return n


def string_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise XapiFault("FIELD_TYPE_ERROR", "value")
    return {str(k): str(v) for k, v in value.items()}


def vm_set_vcpus_at_startup(store: Store, sess: Session, args: list[Any],
                            task: str | None) -> str:
    """VM.set_VCPUs_at_startup(vm, n): at most VCPUs_max."""
    arity("VM.set_VCPUs_at_startup", args, 2)
    with store.cond:
        vm = _vm(store, sess, args[0])
        n = vcpu_count(args[1])
        if n > int(vm.fields["VCPUs_max"]):
            raise XapiFault("VALUE_NOT_SUPPORTED", "VCPUs_at_startup", str(n),
                            "value greater than VCPUs_max")
        store.modify("VM", vm.uuid, VCPUs_at_startup=n)
    return ""


def vm_set_memory_limits(store: Store, sess: Session, args: list[Any],
                         task: str | None) -> str:
    """VM.set_memory_limits(vm, static_min, static_max, dynamic_min, dynamic_max)."""
    arity("VM.set_memory_limits", args, 5)
    with store.cond:
        vm = _vm(store, sess, args[0])
        _power(sess, vm, ("Halted",))
        smin, smax, dmin, dmax = (int64(a, "memory") for a in args[1:])
        if not 0 < smin <= dmin <= dmax <= smax:
            raise XapiFault("MEMORY_CONSTRAINT_VIOLATION",
                            "Memory limits must satisfy: static_min <= dynamic_min <= "
                            "dynamic_max <= static_max")
        store.modify("VM", vm.uuid, memory_static_min=smin, memory_static_max=smax,
                     memory_dynamic_min=dmin, memory_dynamic_max=dmax)
    return ""


def map_ops(cls: str, field: str = "other_config") -> dict[str, Method]:
    """`<cls>.add_to_<field>(obj, key, value)` and `remove_from_<field>(obj, key)` for a
    string map; for other_config also `set_name_label`."""
    def add(store: Store, sess: Session, args: list[Any], task: str | None) -> str:
        arity(f"{cls}.add_to_{field}", args, 3)
        with store.cond:
            obj = store.resolve(sess, cls, args[0])
            entries = dict(obj.fields[field])
            if str(args[1]) in entries:
                raise XapiFault("MAP_DUPLICATE_KEY", cls, field, str(args[0]), str(args[1]))
            entries[str(args[1])] = str(args[2])
            store.modify(cls, obj.uuid, **{field: entries})
        return ""

    def remove(store: Store, sess: Session, args: list[Any], task: str | None) -> str:
        arity(f"{cls}.remove_from_{field}", args, 2)
        with store.cond:
            obj = store.resolve(sess, cls, args[0])
            entries = dict(obj.fields[field])
            entries.pop(str(args[1]), None)
            store.modify(cls, obj.uuid, **{field: entries})
        return ""

    def name(store: Store, sess: Session, args: list[Any], task: str | None) -> str:
        arity(f"{cls}.set_name_label", args, 2)
        with store.cond:
            store.modify(cls, store.resolve(sess, cls, args[0]).uuid, name_label=str(args[1]))
        return ""

    ops = {f"{cls}.add_to_{field}": add, f"{cls}.remove_from_{field}": remove}
    return {**ops, f"{cls}.set_name_label": name} if field == "other_config" else ops


# --- VM: power --------------------------------------------------------------------------

def _free_memory(store: Store, host: Obj) -> int:
    used = sum(int(vm.fields["memory_static_max"]) for vm in store.live("VM")
               if vm.fields["resident_on"] == host.uuid and vm.fields["power_state"] in RUNNING)
    return store.faults.host_memory - int(host.fields["memory_overhead"]) - used


def _placement(store: Store, vm: Obj) -> str:
    """The host with room for `vm` (the first in the pool's order); else
    HOST_NOT_ENOUGH_FREE_MEMORY [needed, the most any host has free]."""
    needed = int(vm.fields["memory_static_max"])
    free = {h.uuid: _free_memory(store, h) for h in store.live("host") if h.fields["enabled"]}
    for host, available in free.items():
        if available >= needed:
            return host
    raise XapiFault("HOST_NOT_ENOUGH_FREE_MEMORY", str(needed), str(max(free.values(), default=0)))


def vm_start(store: Store, sess: Session, args: list[Any], task: str | None) -> str:
    """VM.start(vm, start_paused, force): running (or paused) on a host with room."""
    arity("VM.start", args, 3)
    with store.cond:
        vm = _vm(store, sess, args[0])
        if vm.fields["is_a_template"]:
            raise XapiFault("VM_IS_TEMPLATE", str(args[0]))
        _power(sess, vm, ("Halted",))
        host = _placement(store, vm)
        record = dict(vm.fields)
    paused = bool(args[1])
    store.backend.start(vm.uuid, record, paused)
    with store.cond:
        store.modify("VM", vm.uuid, power_state="Paused" if paused else "Running",
                     resident_on=host)
        _attach(store, vm.uuid, True)
        _open_console(store, vm.uuid, host)
    return ""


def _open_console(store: Store, vm_uuid: str, host: str) -> None:
    """A running VM's rfb console, located on its host (as xapi makes one per domain)."""
    if store.console_location is None:
        return
    console = store.add("console", {"VM": vm_uuid, "protocol": "rfb"})
    store.modify("console", console, location=store.console_location(host, console))


def _halted(store: Store, vm: Obj) -> None:
    store.modify("VM", vm.uuid, power_state="Halted", resident_on="")
    _attach(store, vm.uuid, False)
    for console in [c for c in store.live("console") if c.fields.get("VM") == vm.uuid]:
        store.remove("console", console.uuid)  # its domain is gone


def vm_clean_shutdown(store: Store, sess: Session, args: list[Any], task: str | None) -> str:
    """VM.clean_shutdown(vm). A guest that ignores it (fault switch) keeps the call
    waiting until a hard_shutdown halts the VM: then it ends TASK_CANCELLED, as xapi's
    hard_shutdown cancels the VM's other operations."""
    arity("VM.clean_shutdown", args, 1)
    with store.cond:
        vm = _vm(store, sess, args[0])
        _power(sess, vm, ("Running",))
        if store.faults.guest_ignores_shutdown:
            key = ("task", task) if task else None
            store.cond.wait_for(lambda: vm.fields["power_state"] != "Running"
                                or (key is not None and key not in store.objects)
                                or task in store.faults.cancelled)
            if key is not None and key not in store.objects:
                raise TaskGone()
            raise XapiFault("TASK_CANCELLED", sess.ref(key) if key else "")
    store.backend.shutdown(vm.uuid, False)
    with store.cond:
        _halted(store, vm)
    return ""


def vm_hard_shutdown(store: Store, sess: Session, args: list[Any], task: str | None) -> str:
    """VM.hard_shutdown(vm): halted at once (allowed beside a clean_shutdown)."""
    arity("VM.hard_shutdown", args, 1)
    with store.cond:
        vm = _vm(store, sess, args[0])
        _power(sess, vm, ("Running", "Paused", "Suspended"))
    store.backend.shutdown(vm.uuid, True)
    with store.cond:
        _halted(store, vm)
    return ""


def vm_hard_reboot(store: Store, sess: Session, args: list[Any], task: str | None) -> str:
    """VM.hard_reboot(vm): the guest restarts at once; the VM stays running."""
    arity("VM.hard_reboot", args, 1)
    with store.cond:
        vm = _vm(store, sess, args[0])
        _power(sess, vm, ("Running", "Paused"))
    store.backend.reboot(vm.uuid)
    return ""


def vm_destroy(store: Store, sess: Session, args: list[Any], task: str | None) -> str:
    """VM.destroy(vm): the VM, its VBDs and VIFs removed; its VDIs stay (as xapi)."""
    arity("VM.destroy", args, 1)
    with store.cond:
        vm = _vm(store, sess, args[0])
        _power(sess, vm, ("Halted", "Suspended"))
    store.backend.destroy(vm.uuid)
    with store.cond:
        for cls in ("VBD", "VIF"):
            for obj in owned(store, cls, vm.uuid):
                store.remove(cls, obj.uuid)
        store.remove("VM", vm.uuid)
    return ""
