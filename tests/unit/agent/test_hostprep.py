"""hostprep helpers that change nothing on the host."""

from __future__ import annotations

import grp
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from agent.hostprep import HostPrepError, ensure_kvm_device, pid_alive, unreachable_dirs


def test_pid_alive_for_live_zombie_and_gone_processes() -> None:
    assert pid_alive(os.getpid())
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    # Until we reap it, the exited child is a zombie, which must count as dead.
    while pid_alive(child.pid):
        assert time.monotonic() < deadline, "child never exited"
        time.sleep(0.01)
    assert Path(f"/proc/{child.pid}").exists()
    child.wait()
    assert not pid_alive(child.pid)


def test_unreachable_dirs_names_the_blocking_directories(tmp_path: Path) -> None:
    outer = tmp_path / "outer"
    inner = outer / "inner"
    inner.mkdir(parents=True)
    target = inner / "disk.qcow2"
    target.touch()
    for d in (tmp_path, outer, inner):
        d.chmod(0o711)
    above = unreachable_dirs(tmp_path, "nobody")  # e.g. pytest's own 0700 base

    outer.chmod(0o700)
    assert unreachable_dirs(target, "nobody") == sorted([*above, outer])

    outer.chmod(0o711)
    assert unreachable_dirs(target, "nobody") == above


def test_kvm_device_gets_udev_group_and_mode(tmp_path: Path) -> None:
    device = tmp_path / "kvm"  # a plain file stands in for the character device
    device.touch()
    device.chmod(0o600)
    group = grp.getgrgid(os.getgid()).gr_name

    assert ensure_kvm_device(device, group, "root")

    st = device.stat()
    assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (os.getgid(), 0o660)


def test_kvm_device_that_the_qemu_user_still_cannot_use_is_an_error(tmp_path: Path) -> None:
    device = tmp_path / "kvm"
    device.touch()
    group = grp.getgrgid(os.getgid()).gr_name  # a group "nobody" is not in

    with pytest.raises(HostPrepError, match=f"{device} .*nobody needs group {group}"):
        ensure_kvm_device(device, group, "nobody")


def test_no_kvm_device_changes_nothing(tmp_path: Path) -> None:
    assert not ensure_kvm_device(tmp_path / "kvm", "root", "root")
    assert not (tmp_path / "kvm").exists()
