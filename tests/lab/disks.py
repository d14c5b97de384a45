"""Disks for lab nodes, which have none of their own: a sparse file on a loop device of
this machine, whose device node is made in the node's /dev (the node is a container that
may use any device but sees only the nodes in its own /dev)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lab import node as lab_node
from lab.node import LabNode

DISK_BYTES = 10 * 1024**3  # sparse; ceph-volume wants 5 GB at least


@dataclass
class LabDisk:
    """A loop device over a sparse file, its device node made in one lab node."""

    node: LabNode
    image: Path
    device: str  # /dev/loopN, the same path on the host and in the node


def inside(node: LabNode, *command: str) -> str:
    """The command's output inside `node`; AssertionError with its errors if it fails."""
    out = lab_node.run_inside(node, *command)
    assert out.returncode == 0, f"{command} on {node.name}: {out.stderr}"
    return out.stdout


@contextmanager
def loop_disk(node: LabNode) -> Iterator[LabDisk]:
    """A fresh disk of DISK_BYTES in `node`; afterwards its device node, loop device and
    file are gone (also when making it failed halfway)."""
    image = Path("/var/tmp") / f"vauban-lab-osd-{uuid.uuid4().hex[:8]}.img"
    with image.open("wb") as f:
        f.truncate(DISK_BYTES)
    try:
        device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                                capture_output=True, text=True).stdout.strip()
        try:
            rdev = os.stat(device).st_rdev
            inside(node, "mknod", "-m", "0660", device, "b", str(os.major(rdev)),
                   str(os.minor(rdev)))
            try:
                yield LabDisk(node, image, device)
            finally:
                lab_node.run_inside(node, "rm", "-f", device)
        finally:
            subprocess.run(["losetup", "--detach", device], check=True)
    finally:
        image.unlink()
