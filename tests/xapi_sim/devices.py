"""VBD, VIF and VDI methods (metadata only), and the table of every changing method.

Methods have lifecycle.py's shape `fn(store, sess, args, task)`. `METHODS` maps each
method name to its function; all of them can also be called as `Async.<name>`.
"""

from __future__ import annotations

from typing import Any

from tests.xapi_sim import disks
from tests.xapi_sim import lifecycle as lc
from tests.xapi_sim.model import Session, Store
from tests.xapi_sim.wire import XapiFault


def _record(method: str, args: list[Any]) -> dict[str, Any]:
    lc.arity(method, args, 1)
    if not isinstance(args[0], dict):
        raise XapiFault("FIELD_TYPE_ERROR", "args")
    return args[0]


def vbd_create(store: Store, sess: Session, args: list[Any], task: str | None) -> str:
    """VBD.create(record): VM, VDI (NULL for an empty CD), userdevice, bootable, mode, type."""
    rec = _record("VBD.create", args)
    with store.cond:
        vm = store.resolve(sess, "VM", rec.get("VM"))
        empty = bool(rec.get("empty"))
        vdi = "" if empty else store.resolve(sess, "VDI", rec.get("VDI")).uuid
        userdevice = str(rec.get("userdevice", ""))
        if any(v.fields["userdevice"] == userdevice for v in lc.owned(store, "VBD", vm.uuid)):
            raise XapiFault("DEVICE_ALREADY_EXISTS", userdevice)
        mode, kind = str(rec.get("mode", "RW")), str(rec.get("type", "Disk"))
        if mode not in ("RO", "RW") or kind not in ("Disk", "CD", "Floppy"):
            raise XapiFault("FIELD_TYPE_ERROR", "mode" if mode not in ("RO", "RW") else "type")
        fields = {"VM": vm.uuid, "VDI": vdi, "userdevice": userdevice,
                  "bootable": bool(rec.get("bootable")), "mode": mode, "type": kind,
                  "empty": empty, "other_config": dict(rec.get("other_config") or {})}
        return sess.ref(("VBD", store.add("VBD", fields)))


def vif_create(store: Store, sess: Session, args: list[Any], task: str | None) -> str:
    """VIF.create(record): device, network, VM, MAC, MTU."""
    rec = _record("VIF.create", args)
    with store.cond:
        vm = store.resolve(sess, "VM", rec.get("VM"))
        network = store.resolve(sess, "network", rec.get("network"))
        device = str(rec.get("device", ""))
        if any(v.fields["device"] == device for v in lc.owned(store, "VIF", vm.uuid)):
            raise XapiFault("DEVICE_ALREADY_EXISTS", device)
        fields = {"VM": vm.uuid, "network": network.uuid, "device": device,
                  "MAC": str(rec.get("MAC", "")), "MTU": lc.int64(rec.get("MTU", 1500), "MTU"),
                  "other_config": dict(rec.get("other_config") or {})}
        return sess.ref(("VIF", store.add("VIF", fields)))


def _destroyer(cls: str) -> lc.Method:
    def destroy(store: Store, sess: Session, args: list[Any], task: str | None) -> str:
        lc.arity(f"{cls}.destroy", args, 1)
        with store.cond:
            obj = store.resolve(sess, cls, args[0])
            if obj.fields["currently_attached"]:
                raise XapiFault("DEVICE_ALREADY_ATTACHED", str(args[0]))
            store.remove(cls, obj.uuid)
        return ""
    return destroy


def vdi_destroy(store: Store, sess: Session, args: list[Any], task: str | None) -> str:
    """VDI.destroy(vdi): refused while a VBD of a running VM uses it."""
    lc.arity("VDI.destroy", args, 1)
    with store.cond:
        vdi = store.resolve(sess, "VDI", args[0])
        if any(v.fields["VDI"] == vdi.uuid and v.fields["currently_attached"]
               for v in store.live("VBD")):
            raise XapiFault("VDI_IN_USE", str(args[0]), "destroy")
        store.remove("VDI", vdi.uuid)
        disks.drop_vdi_file(store, vdi.uuid, vdi.fields["SR"])
    return ""


def vdi_clone(store: Store, sess: Session, args: list[Any], task: str | None) -> str:
    """VDI.clone(vdi, driver_params): a new VDI in the same SR, the same size and config."""
    lc.arity("VDI.clone", args, 2)
    with store.cond:
        vdi = store.resolve(sess, "VDI", args[0])
        fields = lc.vdi_copy_fields(vdi, vdi.fields["SR"])
        made = store.add("VDI", {**fields, "sm_config": {
            **vdi.fields["sm_config"], "vhd-parent": vdi.uuid}})
        disks.copy_content(store, vdi.uuid, made)
        return sess.ref(("VDI", made))


def vdi_copy(store: Store, sess: Session, args: list[Any], task: str | None) -> str:
    """VDI.copy(vdi, sr): a full copy into `sr`."""
    lc.arity("VDI.copy", args, 2)
    with store.cond:
        vdi = store.resolve(sess, "VDI", args[0])
        sr = store.resolve(sess, "SR", args[1])
        made = store.add("VDI", lc.vdi_copy_fields(vdi, sr.uuid))
        disks.copy_content(store, vdi.uuid, made)
        return sess.ref(("VDI", made))


def vdi_resize(store: Store, sess: Session, args: list[Any], task: str | None) -> str:
    """VDI.resize(vdi, size): grown (never shrunk)."""
    lc.arity("VDI.resize", args, 2)
    with store.cond:
        vdi = store.resolve(sess, "VDI", args[0])
        size = lc.int64(args[1], "size")
        if size < int(vdi.fields["virtual_size"]):
            raise XapiFault("SR_BACKEND_FAILURE_79", "", "VDI Invalid size",
                            "shrinking is not allowed")
        store.modify("VDI", vdi.uuid, virtual_size=size)
        disks.grow_content(store, vdi.uuid, size)
    return ""


METHODS: dict[str, lc.Method] = {
    "VM.clone": lc.vm_clone,
    "VM.provision": lc.vm_provision,
    "VM.set_name_label": lc.map_ops("VM")["VM.set_name_label"],
    "VM.set_memory_limits": lc.vm_set_memory_limits,
    "VM.set_VCPUs_max": lc.setter("VCPUs_max", True, lc.vcpu_count),
    "VM.set_VCPUs_at_startup": lc.vm_set_vcpus_at_startup,
    "VM.set_HVM_boot_params": lc.setter("HVM_boot_params", False, lc.string_map),
    "VM.set_platform": lc.setter("platform", False, lc.string_map),
    **lc.map_ops("VM", "platform"),
    "VM.add_to_other_config": lc.map_ops("VM")["VM.add_to_other_config"],
    "VM.remove_from_other_config": lc.map_ops("VM")["VM.remove_from_other_config"],
    "VM.start": lc.vm_start,
    "VM.clean_shutdown": lc.vm_clean_shutdown,
    "VM.hard_shutdown": lc.vm_hard_shutdown,
    "VM.hard_reboot": lc.vm_hard_reboot,
    "VM.destroy": lc.vm_destroy,
    "VBD.create": vbd_create,
    "VBD.destroy": _destroyer("VBD"),
    "VIF.create": vif_create,
    "VIF.destroy": _destroyer("VIF"),
    "VDI.destroy": vdi_destroy,
    "VDI.clone": vdi_clone,
    "VDI.copy": vdi_copy,
    "VDI.resize": vdi_resize,
    **lc.map_ops("VDI"),
}
