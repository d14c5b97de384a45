"""What VDIs hold, and the calls around imports (test code only).

Each VDI's bytes are a sparse file `<sim folder>/sr-<SR uuid>/<VDI uuid>`, made (as
zeros of the VDI's `virtual_size`) the first time anything reads or writes it, and
removed with the VDI. `vdi_file` is the one way to reach it, for every part of the
simulator (an import writes it, a clone copies it).

Calls answered here: `task.create`/`task.destroy` (an HTTP import reports through a task
its client made), `VDI.add_to_other_config`/`remove_from_other_config` and
`VM.get_consoles` (the generated field accessors xapi has for every field; only those
Vauban calls).
"""

from __future__ import annotations

import subprocess
import time
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.xapi_sim.model import Session, Store
from tests.xapi_sim.wire import XapiFault


def vdi_file(store: Store, vdi_uuid: str) -> Path:
    """The file holding VDI `vdi_uuid`'s bytes, made sparse at its virtual size if it was
    not there yet. KeyError when no such VDI lives."""
    vdi = store.objects[("VDI", vdi_uuid)]
    if store.folder is None:
        raise RuntimeError("the simulated pool has no folder for VDI contents")
    path = store.folder / f"sr-{vdi.fields['SR']}" / vdi_uuid
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        with path.open("wb") as f:
            f.truncate(int(vdi.fields["virtual_size"]))
    return path


def drop_vdi_file(store: Store, vdi_uuid: str, sr_uuid: str) -> None:
    """Remove the file of a destroyed VDI, if it was ever made."""
    if store.folder is not None:
        (store.folder / f"sr-{sr_uuid}" / vdi_uuid).unlink(missing_ok=True)


def _content(store: Store, vdi_uuid: str) -> Path | None:
    """The file of a live VDI if it was ever made (a VDI never written holds zeros)."""
    vdi = store.objects.get(("VDI", vdi_uuid))
    if vdi is None or store.folder is None:
        return None
    path = store.folder / f"sr-{vdi.fields['SR']}" / vdi_uuid
    return path if path.exists() else None


def copy_content(store: Store, source_uuid: str, copy_uuid: str) -> None:
    """Give VDI `copy_uuid` the bytes of `source_uuid` (a clone or copy), sparse."""
    source = _content(store, source_uuid)
    if source is not None:
        subprocess.run(["cp", "--sparse=always", str(source), str(vdi_file(store, copy_uuid))],
                       check=True)


def grow_content(store: Store, vdi_uuid: str, size: int) -> None:
    """A resized VDI's file grows with it (zeros at the end)."""
    path = _content(store, vdi_uuid)
    if path is not None:
        with path.open("r+b") as f:
            f.truncate(size)


def _arity(method: str, args: list[Any], expected: int) -> None:
    if len(args) != expected:
        raise XapiFault("MESSAGE_PARAMETER_COUNT_MISMATCH", method, str(expected),
                        str(len(args)))


def _task_create(store: Store, sess: Session, args: list[Any]) -> str:
    _arity("task.create", args, 2)
    uuid = store.add("task", {"name_label": str(args[0]), "name_description": str(args[1])})
    return sess.ref(("task", uuid))


def _task_destroy(store: Store, sess: Session, args: list[Any]) -> str:
    _arity("task.destroy", args, 1)
    store.remove("task", store.resolve(sess, "task", args[0]).uuid)
    return ""


def _add_to_other_config(store: Store, sess: Session, args: list[Any]) -> str:
    _arity("VDI.add_to_other_config", args, 3)
    vdi = store.resolve(sess, "VDI", args[0])
    key, value = str(args[1]), str(args[2])
    if key in vdi.fields["other_config"]:
        raise XapiFault("MAP_DUPLICATE_KEY", "VDI", "other_config", sess.ref(("VDI", vdi.uuid)),
                        key)
    store.modify("VDI", vdi.uuid, other_config={**vdi.fields["other_config"], key: value})
    return ""


def _remove_from_other_config(store: Store, sess: Session, args: list[Any]) -> str:
    _arity("VDI.remove_from_other_config", args, 2)
    vdi = store.resolve(sess, "VDI", args[0])
    kept = {k: v for k, v in vdi.fields["other_config"].items() if k != str(args[1])}
    store.modify("VDI", vdi.uuid, other_config=kept)
    return ""


def _vm_consoles(store: Store, sess: Session, args: list[Any]) -> list[str]:
    _arity("VM.get_consoles", args, 1)
    return list(store.record(sess, store.resolve(sess, "VM", args[0]))["consoles"])


CALLS: dict[str, Callable[[Store, Session, list[Any]], Any]] = {
    "task.create": _task_create,
    "task.destroy": _task_destroy,
    "VDI.add_to_other_config": _add_to_other_config,
    "VDI.remove_from_other_config": _remove_from_other_config,
    "VM.get_consoles": _vm_consoles,
}


def finish_task(store: Store, task_uuid: str, result: str = "",
                error: list[str] | None = None) -> None:
    """Mark a task done: `success` with `result` (an XML-RPC `<value>`, as xapi keeps
    results), or `failure` with `error` as its error_info."""
    now = xmlrpc.client.DateTime(time.gmtime())
    if error is None:
        store.modify("task", task_uuid, status="success", progress=1.0, result=result,
                     finished=now)
    else:
        store.modify("task", task_uuid, status="failure", error_info=list(error),
                     finished=now)
