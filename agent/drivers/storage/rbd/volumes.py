"""Volumes in RBD pools: `vol-<id>` images with snapshots and copy-on-write clones.

A volume lives in one of the pools the driver may use; operations find it by id.
"In use" means the image has watchers (a VM, or any other client, has it open for
writing): rollback and removal refuse such a volume.
"""

from __future__ import annotations

from typing import Any

from agent.drivers.storage.base import StorageError, VolumeInfo
from agent.drivers.storage.rbd.conn import CephConnection, bindings
from agent.drivers.storage.rbd.images import children_of
from agent.drivers.storage.rbd.names import check_snap, volume_id_of, volume_name
from agent.revert import Reverter

GIB = 1024**3
ROLLBACK_SEQ_KEY = "vauban.rollback_seq"  # image metadata: last rollback request applied
# image metadata, one key per snapshot taken while the guest's filesystems were frozen
# (RBD keeps no metadata per snapshot); a key without its snapshot means nothing
QUIESCED_PREFIX = "vauban.quiesced."


class Volumes:
    """Volume operations on `pools` (the first is the default one) through `conn`."""

    def __init__(self, conn: CephConnection, pools: tuple[str, ...]) -> None:
        self.conn = conn
        self.pools = pools

    def check_pool(self, pool: str | None) -> str:
        """`pool`, or the default one for None; StorageError for a pool not ours to use."""
        if pool is None:
            return self.pools[0]
        if pool not in self.pools:
            raise StorageError(f"pool {pool!r} is not one this storage may use "
                               f"(allowed: {', '.join(self.pools)})")
        return pool

    def find(self, volume_id: str) -> str | None:
        """The pool holding vol-<id>, or None."""
        _, rbd = bindings()
        name = volume_name(volume_id)
        for pool in self.pools:
            with self.conn.ioctx(pool, f"look up volume {volume_id}") as ioctx:
                try:
                    with rbd.Image(ioctx, name, read_only=True):
                        return pool
                except rbd.ImageNotFound:
                    continue
        return None

    def locate(self, volume_id: str) -> str:
        pool = self.find(volume_id)
        if pool is None:
            raise StorageError(f"volume {volume_id} does not exist")
        return pool

    def create(self, volume_id: str, size_gib: int, pool: str | None) -> VolumeInfo:
        _, rbd = bindings()
        pool = self.check_pool(pool)
        if size_gib < 1:
            raise StorageError(f"volume size must be at least 1 GiB, not {size_gib}")
        if self.find(volume_id) is not None:
            raise StorageError(f"volume {volume_id} already exists")
        with self.conn.ioctx(pool, f"create volume {volume_id}") as ioctx:
            try:
                rbd.RBD().create(ioctx, volume_name(volume_id), size_gib * GIB)
            except rbd.ImageExists:
                raise StorageError(f"volume {volume_id} already exists") from None
            return self._info(ioctx, pool, volume_id)

    def delete(self, volume_id: str) -> None:
        _, rbd = bindings()
        pool = self.find(volume_id)
        if pool is None:
            return
        name = volume_name(volume_id)
        with self.conn.ioctx(pool, f"delete volume {volume_id}") as ioctx:
            with rbd.Image(ioctx, name, read_only=True) as img:
                _refuse_if_in_use(img, volume_id, "deleted")
                snaps = [s["name"] for s in img.list_snaps()]
                for snap in snaps:  # every check before the first change
                    img.set_snap(snap)
                    clones = children_of(img)
                    if clones:
                        raise StorageError(f"volume {volume_id} cannot be deleted: its "
                                           f"snapshot {snap} has clones {', '.join(clones)}")
            with rbd.Image(ioctx, name) as img:
                for snap in snaps:
                    if img.is_protected_snap(snap):
                        img.unprotect_snap(snap)
                    img.remove_snap(snap)
            rbd.RBD().remove(ioctx, name)

    def resize(self, volume_id: str, size_gib: int) -> None:
        _, rbd = bindings()
        pool = self.locate(volume_id)
        with self.conn.ioctx(pool, f"resize volume {volume_id}") as ioctx:
            with rbd.Image(ioctx, volume_name(volume_id)) as img:
                size, new = int(img.size()), size_gib * GIB
                if new < size:
                    raise StorageError(f"volume {volume_id} is {size} bytes; shrinking it to "
                                       f"{size_gib} GiB is refused")
                if new > size:
                    img.resize(new, allow_shrink=False)

    def snapshot(self, volume_id: str, snap: str, *, quiesced: bool = False) -> None:
        """Take the snapshot, then record whether it is quiesced (set or clear its key: a
        clone inherits its parent's metadata); should that fail, the snapshot is removed."""
        _, rbd = bindings()
        check_snap(snap)
        pool = self.locate(volume_id)
        with self.conn.ioctx(pool, f"snapshot volume {volume_id}") as ioctx, \
                rbd.Image(ioctx, volume_name(volume_id)) as img, Reverter() as revert:
            try:
                img.create_snap(snap)
            except rbd.ImageExists:
                raise StorageError(f"volume {volume_id} already has a snapshot "
                                   f"{snap}") from None
            revert.add(lambda: img.remove_snap(snap), f"remove snapshot {volume_id}@{snap}")
            if quiesced:
                img.metadata_set(QUIESCED_PREFIX + snap, "1")
            else:
                _forget_quiesced(img, snap)
            revert.success()

    def rollback(self, volume_id: str, snap: str, seq: int) -> None:
        """Roll back, then record `seq` (if > 0) in the image's metadata.

        A failure between the two leaves `seq` unrecorded, so the request runs again:
        a second rollback to the same snapshot is harmless where a lost one is not.
        """
        _, rbd = bindings()
        pool = self.locate(volume_id)
        name = volume_name(volume_id)
        with self.conn.ioctx(pool, f"roll back volume {volume_id}") as ioctx:
            with rbd.Image(ioctx, name, read_only=True) as img:
                if seq > 0 and _rollback_seq(img) >= seq:
                    return
                _refuse_if_in_use(img, volume_id, "rolled back")
                _snap_exists(img, volume_id, snap)
            with rbd.Image(ioctx, name) as img:
                img.rollback_to_snap(snap)
                if seq > 0:
                    img.metadata_set(ROLLBACK_SEQ_KEY, str(seq))

    def delete_snapshot(self, volume_id: str, snap: str) -> None:
        _, rbd = bindings()
        pool = self.find(volume_id)
        if pool is None:
            return
        with self.conn.ioctx(pool, f"delete snapshot {snap} of volume {volume_id}") as ioctx:
            with rbd.Image(ioctx, volume_name(volume_id)) as img:
                if not any(s["name"] == snap for s in img.list_snaps()):
                    return
                if img.is_protected_snap(snap):
                    img.set_snap(snap)
                    clones = children_of(img)
                    img.set_snap(None)
                    if clones:
                        raise StorageError(f"snapshot {snap} of volume {volume_id} has clones "
                                           f"{', '.join(clones)}; not deleted")
                    img.unprotect_snap(snap)
                img.remove_snap(snap)
                _forget_quiesced(img, snap)

    def clone(self, src_volume_id: str, snap: str, new_volume_id: str) -> VolumeInfo:
        _, rbd = bindings()
        pool = self.locate(src_volume_id)
        if self.find(new_volume_id) is not None:
            raise StorageError(f"volume {new_volume_id} already exists")
        new = volume_name(new_volume_id)
        with self.conn.ioctx(pool, f"clone volume {src_volume_id}@{snap}") as ioctx, \
                Reverter() as revert:
            with rbd.Image(ioctx, volume_name(src_volume_id)) as img:
                _snap_exists(img, src_volume_id, snap)
                if not img.is_protected_snap(snap):
                    img.protect_snap(snap)
                    revert.add(lambda: self._unprotect(pool, src_volume_id, snap),
                               f"unprotect {src_volume_id}@{snap}")
            try:
                rbd.RBD().clone(ioctx, volume_name(src_volume_id), snap, ioctx, new)
            except rbd.ImageExists:
                raise StorageError(f"volume {new_volume_id} already exists") from None
            revert.success()
            return self._info(ioctx, pool, new_volume_id)

    def _unprotect(self, pool: str, volume_id: str, snap: str) -> None:
        _, rbd = bindings()
        with self.conn.ioctx(pool, f"unprotect {volume_id}@{snap}") as ioctx:
            with rbd.Image(ioctx, volume_name(volume_id)) as img:
                img.unprotect_snap(snap)

    def list_all(self) -> list[VolumeInfo]:
        _, rbd = bindings()
        out = []
        for pool in self.pools:
            with self.conn.ioctx(pool, f"list volumes of pool {pool}") as ioctx:
                for name in sorted(rbd.RBD().list(ioctx)):
                    vid = volume_id_of(name)
                    if vid is None:
                        continue
                    try:
                        out.append(self._info(ioctx, pool, vid))
                    except rbd.ImageNotFound:
                        continue  # removed since it was listed
        return out

    def _info(self, ioctx: Any, pool: str, volume_id: str) -> VolumeInfo:
        _, rbd = bindings()
        with rbd.Image(ioctx, volume_name(volume_id), read_only=True) as img:
            size = int(img.size())
            used = 0

            def count(_offset: int, length: int, exists: bool) -> int:
                nonlocal used
                used += length if exists else 0
                return 0

            # Whole objects, from the object map: fast, and what the pool really holds.
            img.diff_iterate(0, size, None, count, include_parent=False, whole_object=True)
            snaps = tuple(s["name"] for s in img.list_snaps())
            seq = _rollback_seq(img)
            marked = {key.removeprefix(QUIESCED_PREFIX) for key, _value in img.metadata_list()
                      if key.startswith(QUIESCED_PREFIX)}
        return VolumeInfo(id=volume_id, pool=pool, size_bytes=size, used_bytes=used,
                          snapshots=snaps, rollback_seq=seq,
                          quiesced_snapshots=tuple(s for s in snaps if s in marked))


def _refuse_if_in_use(img: Any, volume_id: str, action: str) -> None:
    """StorageError (retryable) if a client has the image open for writing."""
    watchers = list(img.watchers_list())
    if watchers:
        who = ", ".join(str(w.get("addr")) for w in watchers)
        raise StorageError(f"volume {volume_id} is in use by {who}; not {action}",
                           retryable=True)


def _rollback_seq(img: Any) -> int:
    """The last rollback request applied to the image (0: none)."""
    try:
        return int(img.metadata_get(ROLLBACK_SEQ_KEY))
    except KeyError:
        return 0
    except ValueError:
        raise StorageError(f"unreadable {ROLLBACK_SEQ_KEY} metadata on "
                           f"{img.get_name()}") from None


def _forget_quiesced(img: Any, snap: str) -> None:
    try:
        img.metadata_remove(QUIESCED_PREFIX + snap)
    except KeyError:
        pass  # never quiesced


def _snap_exists(img: Any, volume_id: str, snap: str) -> None:
    if not any(s["name"] == snap for s in img.list_snaps()):
        raise StorageError(f"volume {volume_id} has no snapshot {snap}")
