"""hostprep helpers that change nothing on the host."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from agent.hostprep import pid_alive, unreachable_dirs


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
