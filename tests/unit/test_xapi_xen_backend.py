"""The real-Xen backend's pure parts (tests/xapi_sim/backend_xl.py, dom0.py): power
states read from `xl list`, guest configs, argument checks, when the image is unavailable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.xapi_sim import dom0
from tests.xapi_sim.backend_xl import Domain, XlBackend, XlDom0


class _FakeDom0:
    """Answers `xl list` with a fixed table and records every other command."""

    def __init__(self, listing: str) -> None:
        self.listing = listing
        self.commands: list[str] = []

    def run(self, command: str, timeout: float = 300, stdin: bytes | None = None, *,
            retry: bool = False) -> str:
        self.commands.append(command)
        return self.listing if command == "xl list" else ""


XL_LIST = """Name                                        ID   Mem VCPUs\tState\tTime(s)
Domain-0                                     0  1024     2     r-----      56.2
busy                                         3   128     1     r-----       1.0
idle                                         4   128     1     -b----       1.0
waiting                                      5   128     1     ------       0.4
paused                                       6   128     1     --p---       0.1
leaving                                      7   128     1     ---s--       2.0
"""


def _backend(listing: str = XL_LIST) -> tuple[XlBackend, _FakeDom0]:
    fake = _FakeDom0(listing)
    fake_dom0: Any = fake
    backend = XlBackend(fake_dom0, Path("/nonexistent"))
    return backend, fake


def test_a_runnable_domain_waiting_for_a_cpu_is_running_not_halted() -> None:
    # xl shows no state letter for a domain that is runnable but not on a CPU right now
    assert Domain("g", 5, 128, 1, "------").state == "running"


def test_states_follow_xl_list_and_a_missing_domain_is_halted() -> None:
    backend, _ = _backend()
    assert [d.name for d in backend.domains()] == ["busy", "idle", "waiting", "paused",
                                                   "leaving"]
    assert {n: backend.state(n) for n in ("busy", "idle", "waiting", "paused", "leaving",
                                          "gone")} == {
        "busy": "running", "idle": "running", "waiting": "running", "paused": "paused",
        "leaving": "halted", "gone": "halted"}


def test_guest_config_is_pv_with_the_test_initramfs_and_destroyed_on_any_stop() -> None:
    backend, _ = _backend()
    config = backend.config("vm-1", 256, 2)
    assert 'type = "pv"' in config and "memory = 256" in config and "vcpus = 2" in config
    assert 'ramdisk = "/var/lib/vauban-xl/testguest-initrd.gz"' in config
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        assert f'{event} = "destroy"' in config


@pytest.mark.parametrize(("name", "memory", "vcpus"), [
    ("bad name", 128, 1), ("x;reboot", 128, 1), ("", 128, 1), ("a" * 65, 128, 1),
    ("ok", 64, 1), ("ok", 2048, 1), ("ok", 128, 0), ("ok", 128, 3)])
def test_create_refuses_bad_names_and_sizes_before_touching_dom0(name: str, memory: int,
                                                                 vcpus: int) -> None:
    backend, fake = _backend()
    with pytest.raises(ValueError):
        backend.create(name, memory, vcpus)
    assert fake.commands == []


def test_destroy_of_a_missing_domain_runs_no_xl_destroy() -> None:
    backend, fake = _backend()
    backend.destroy("gone")
    assert not any(c.startswith("xl destroy") for c in fake.commands)


def test_image_is_unavailable_without_debootstrap_and_nothing_is_built(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = dom0.shutil.which
    monkeypatch.setattr(dom0.shutil, "which",
                        lambda tool: None if tool == "debootstrap" else real_which(tool))
    with pytest.raises(dom0.Dom0Unavailable, match="debootstrap"):
        dom0.ensure_image(tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_the_image_folder_is_named_by_its_inputs(tmp_path: Path) -> None:
    assert dom0.image_folder(tmp_path).name == dom0.input_hash()
    assert len(dom0.input_hash()) == 16
    assert XlDom0(dom0.Dom0Image(tmp_path), tmp_path).overlay.parent == tmp_path
