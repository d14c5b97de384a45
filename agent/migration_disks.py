"""Root disks that move with their VM (local storage): made on the target, let go of after.

When disks are each node's own, a live migration copies the root disk's own data
(the overlay; its image is stored on both nodes) into a disk the target made for it.
Two records in the VM's directory say that this node's copy of the disk is not the
VM's, so that letting go of the VM here removes it with its directory:

- `incoming-disk` (the migration's seq): made here for a move that has not arrived.
  It goes once the VM is defined here: from then on the disk is the VM's own.
- `disk-left`: the VM left this node, its disk copied to the target. It goes when the
  VM comes back by another move (its disk here is made afresh then).

Whatever the records say, a disk is deleted only while no domain of the VM is here.

A disk with neither record is never deleted here but with its VM (the controller's
`delete_vm_disks`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from agent.drivers.storage.base import StorageDriver, StorageError
from agent.protocol import DesiredVm

log = logging.getLogger(__name__)

INCOMING = "incoming-disk"
LEFT = "disk-left"


def prepare(storage: StorageDriver, vm: DesiredVm, vm_dir: Path) -> None:
    """Make sure the VM's root disk made for this very move (`vm.incoming_from.seq`) is
    here: the image must be stored. A disk made for an earlier move, or left by one, is
    stale (a failed copy may have written part of it) and made afresh. One made by an
    earlier try of this move is kept: the source may be copying into it already.

    The record is written before the disk, so a crash in between never leaves a disk
    nothing accounts for. StorageError (and nothing made) when a disk of the VM that no
    record marks as disposable is here: it may hold the VM's only data.
    """
    assert vm.incoming_from is not None
    seq = vm.incoming_from.seq
    made_for = _made_for(vm_dir)
    exists = storage.vm_disk_exists(vm.id)
    if made_for == seq and exists:
        return
    if exists and made_for is None and not (vm_dir / LEFT).exists():
        raise StorageError(f"VM {vm.id} already has a root disk on this node that no earlier "
                           "move accounts for; it is kept and the VM cannot arrive here "
                           "with its disk until it is removed")
    if exists:
        storage.delete_vm_disks(vm.id)  # stale: of an earlier move
    (vm_dir / LEFT).unlink(missing_ok=True)
    (vm_dir / INCOMING).write_text(f"{seq}\n")
    storage.create_root_disk(vm.id, vm.image.id, vm.root_disk_gib)
    log.info("VM %s: root disk made for its arrival (move %d)", vm.id, seq)


def arrived(vm_dir: Path) -> None:
    """The VM is defined here: the disk made for its arrival is its own now. Idempotent.
    (`disk-left` stays: it is written while the VM's domain leaves, and a pass that
    listed the domain just before must not clear it.)"""
    (vm_dir / INCOMING).unlink(missing_ok=True)


def left(vm_dir: Path) -> None:
    """The VM left this node, its root disk copied to the target: this copy is stale."""
    (vm_dir / LEFT).touch()


def disposable(vm_dir: Path) -> bool:
    """Whether this node's disk of a VM not defined here is not the VM's (see the
    module's records): removed when the node lets go of the VM."""
    return (vm_dir / INCOMING).exists() or (vm_dir / LEFT).exists()


def _made_for(vm_dir: Path) -> int | None:
    """The move the disk here was made for, per its record; None without one."""
    try:
        return int((vm_dir / INCOMING).read_text().strip())
    except FileNotFoundError:
        return None
    except ValueError:
        return 0  # a record of no known move: its disk is stale all the same
