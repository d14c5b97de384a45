"""The simulator's calls around imports and consoles, without HTTP (tests/xapi_sim):
tasks made by clients, other_config edits, VM.get_consoles, VDI files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.xapi_sim import api, disks
from tests.xapi_sim.model import Store
from tests.xapi_sim.wire import XapiFault


def _store(tmp_path: Path) -> tuple[Store, str]:
    store = Store("root", "pw")
    store.folder = tmp_path
    return store, store.login("root", "pw", "test")


def test_tasks_made_by_clients_live_until_destroyed(tmp_path: Path) -> None:
    store, session = _store(tmp_path)
    task = api.call(store, "task.create", [session, "import", ""], None)
    record = api.call(store, "task.get_record", [session, task], None)
    assert record["status"] == "pending" and record["name_label"] == "import"
    api.call(store, "task.destroy", [session, task], None)
    assert store.live("task") == []


def test_other_config_keys_are_added_once_and_removed(tmp_path: Path) -> None:
    store, session = _store(tmp_path)
    sr = store.add("SR", {})
    vdi = api.call(store, "VDI.create", [session, {"SR": api.call(
        store, "SR.get_by_uuid", [session, sr], None), "virtual_size": "1024"}], None)
    api.call(store, "VDI.add_to_other_config", [session, vdi, "k", "v"], None)
    with pytest.raises(XapiFault) as twice:
        api.call(store, "VDI.add_to_other_config", [session, vdi, "k", "w"], None)
    assert twice.value.description[0] == "MAP_DUPLICATE_KEY"
    api.call(store, "VDI.remove_from_other_config", [session, vdi, "k"], None)
    assert api.call(store, "VDI.get_record", [session, vdi], None)["other_config"] == {}


def test_a_vdi_file_is_made_sparse_at_its_size_and_goes_with_the_vdi(tmp_path: Path) -> None:
    store, session = _store(tmp_path)
    sr = store.add("SR", {})
    ref = api.call(store, "VDI.create", [session, {"SR": api.call(
        store, "SR.get_by_uuid", [session, sr], None), "virtual_size": str(2**40)}], None)
    uuid = api.call(store, "VDI.get_uuid", [session, ref], None)
    path = disks.vdi_file(store, uuid)
    assert path.stat().st_size == 2**40 and path.stat().st_blocks == 0
    api.call(store, "VDI.destroy", [session, ref], None)
    assert not path.exists()


def test_a_vm_s_consoles_are_its_console_objects(tmp_path: Path) -> None:
    store, session = _store(tmp_path)
    vm = store.add("VM", {"power_state": "Running"})
    console = store.add("console", {"VM": vm, "location": "https://h/console?uuid=x"})
    ref = api.call(store, "VM.get_by_uuid", [session, vm], None)
    (found,) = api.call(store, "VM.get_consoles", [session, ref], None)
    assert api.call(store, "console.get_uuid", [session, found], None) == console
    assert api.call(store, "VM.get_record", [session, ref], None)["consoles"] == [found]
