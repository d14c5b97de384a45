"""The lab says why it cannot switch its nodes' power: no cgroup v1 freezer mounted."""

from __future__ import annotations

from pathlib import Path

from lab.node import freezer_unavailable


def test_a_v1_freezer_mount_is_enough(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("cgroup /sys/fs/cgroup/freezer cgroup rw,relatime,freezer 0 0\n")
    assert freezer_unavailable(mounts) is None


def test_a_unified_hierarchy_alone_is_named(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec 0 0\n"
                      "cgroup /sys/fs/cgroup/freezer cgroup rw,relatime,memory 0 0\n")
    assert freezer_unavailable(mounts) == ("no cgroup v1 freezer is mounted at "
                                           "/sys/fs/cgroup/freezer (lab power control needs it)")
