"""Mounts the builder makes (chroots, overlays), and removing a work folder safely.

Every mount is registered on an ExitStack as soon as it succeeds, so it is undone on
success and on failure; `remove_tree` refuses to delete a folder that still has something
mounted under it (a bind mount of /dev would otherwise lose the host's device nodes).
"""

from __future__ import annotations

import shutil
import subprocess
from contextlib import ExitStack
from pathlib import Path


def mount(stack: ExitStack, args: list[str], target: Path, lazy: bool = False) -> None:
    """`mount ARGS TARGET`, unmounted when `stack` closes (lazily: also when busy)."""
    subprocess.run(["mount", *args, str(target)], check=True)
    stack.callback(subprocess.run, ["umount", *(["-l"] if lazy else []), str(target)],
                   check=True)


def chroot_mounts(root: Path, stack: ExitStack) -> None:
    """proc, sys and dev in `root` until `stack` closes (apt and pip in a chroot need them)."""
    mount(stack, ["-t", "proc", "proc"], root / "proc", lazy=True)
    mount(stack, ["-t", "sysfs", "sysfs"], root / "sys", lazy=True)
    mount(stack, ["--bind", "/dev"], root / "dev", lazy=True)


def mounted_under(folder: Path) -> list[str]:
    """The mount points at or below `folder` (from /proc/self/mounts)."""
    prefix = str(folder.resolve())
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return points


def remove_tree(folder: Path) -> None:
    """Removes `folder` if it exists; raises RuntimeError, removing nothing, while
    anything is still mounted under it."""
    if not folder.exists():
        return
    left = mounted_under(folder)
    if left:
        raise RuntimeError(f"not removing {folder}: still mounted: {', '.join(left)}")
    shutil.rmtree(folder)
