"""RbdDriver: images, VM root disks and volumes as RBD images in a Ceph cluster.

Every node of a region sees the same pool, so an image is imported once per cluster
and a root disk is a copy-on-write clone of it (O(1) whatever its size). The driver
talks to Ceph as a limited cephx client (caps on its pools only) whose key it holds
in memory: no keyring or other file with the key is written on the node; QEMU gets
the key from the hypervisor's secret named by `secret_usage`.

Names in the pool: see agent.drivers.storage.rbd.names.
"""

from __future__ import annotations

import errno
import tempfile
from collections.abc import Iterable
from pathlib import Path

from agent.drivers.hypervisor.base import DiskSpec, RbdSource
from agent.drivers.storage.base import (
    StorageDriver,
    StorageError,
    StorageHealth,
    StorageInfo,
    VolumeInfo,
)
from agent.drivers.storage.rbd import images
from agent.drivers.storage.rbd.cephx import valid_key
from agent.drivers.storage.rbd.conn import CephConnection, bindings
from agent.drivers.storage.rbd.names import (
    BASE_SNAP,
    check_id,
    health_summary,
    image_name,
    parse_mon_host,
    pool_usage,
    root_disk_name,
    volume_id_of,
    volume_name,
)
from agent.drivers.storage.rbd.volumes import Volumes
from agent.protocol import ImageRef
from agent.revert import Reverter

GIB = 1024**3


class RbdDriver(StorageDriver):
    """Images and root disks in `pool`; volumes in `volume_pools` (default: `pool`).

    `user` is the cephx id without "client.", `key` its base64 secret, `mon_host` the
    monitors as librados takes them ("[v2:10.0.0.1:3300,v1:10.0.0.1:6789],..." or
    "10.0.0.1,10.0.0.2"). `scratch_dir` receives qcow2 images while they are converted.
    An unreachable cluster makes calls fail with a retryable StorageError after about
    `connect_timeout` seconds; a single operation fails after `op_timeout` seconds.
    A temporary image of an import no client holds open is swept as stale once it is
    `stale_import_after_s` old.
    """

    def __init__(self, pool: str, user: str, key: str, mon_host: str, secret_usage: str,
                 volume_pools: Iterable[str] = (), scratch_dir: Path | str | None = None,
                 connect_timeout: float = 10.0, op_timeout: float = 30.0,
                 stale_import_after_s: float = images.STALE_IMPORT_AFTER_S) -> None:
        if user.startswith("client."):
            raise StorageError(f"cephx user {user!r}: give the id without 'client.'")
        check_id("cephx user", user)
        if not valid_key(key):
            raise StorageError(f"the cephx key given for client.{user} is not a valid key")
        self.pool = pool
        self.user = user
        self.secret_usage = secret_usage
        self.monitors = parse_mon_host(mon_host)
        self.scratch_dir = Path(scratch_dir or tempfile.gettempdir())
        self.conn = CephConnection(user=user, key=key, mon_host=mon_host,
                                   connect_timeout=connect_timeout, op_timeout=op_timeout)
        vol_pools = tuple(volume_pools) or (pool,)
        self.volumes = Volumes(self.conn, tuple(dict.fromkeys([*vol_pools, pool])))
        self.stale_import_after_s = stale_import_after_s
        self._importing: set[str] = set()  # temporary images this process imports into

    def close(self) -> None:
        """Shut the cluster connection down; the next call opens a new one."""
        self.conn.close()

    def info(self) -> StorageInfo:
        return StorageInfo(name="rbd", remote=True, copy_on_write=True, volumes=True)

    def _source(self, pool: str, name: str) -> RbdSource:
        return RbdSource(pool=pool, image=name, monitors=self.monitors, user=self.user,
                         secret_usage=self.secret_usage)

    # --- images ----------------------------------------------------------------------

    def has_image(self, image_id: str) -> bool:
        return images.has_image(self.conn, self.pool, image_id)

    def import_image(self, image: ImageRef, chunks: Iterable[bytes]) -> None:
        """Import into img-<id>@base (see images.import_image); a stored image is kept
        and the stream not read."""
        check_id("image", image.id)
        if self.has_image(image.id):
            return
        images.import_image(self.conn, self.pool, image, chunks, self.scratch_dir,
                            self.monitors, self._importing)

    def sweep_leftovers(self) -> list[str]:
        """Remove the temporary images interrupted imports left in the pool (a crashed
        agent's, on any node); imports in flight, here or elsewhere, are left alone. See
        images.sweep_stale_imports."""
        return images.sweep_stale_imports(self.conn, self.pool, self._importing,
                                          self.stale_import_after_s)

    def delete_image(self, image_id: str) -> None:
        """Remove img-<id> and its snapshot; a no-op if absent. Refused, naming the
        clones ("pool/image"), while disks are cloned from it."""
        images.delete_image(self.conn, self.pool, image_id)

    def image_virtual_size(self, image_id: str) -> int:
        return images.image_size(self.conn, self.pool, image_id)

    # --- root disks ------------------------------------------------------------------

    def create_root_disk(self, vm_id: str, image_id: str, size_gib: int | None) -> DiskSpec:
        """Clone img-<id>@base to vm-<vm_id>-root, grown to `size_gib` GiB if given.

        On failure (missing image, a size below the image's, an existing disk) nothing
        was created.
        """
        _, rbd = bindings()
        name = root_disk_name(vm_id)
        if not self.has_image(image_id):
            raise StorageError(f"image {image_id} is not stored in pool {self.pool}")
        virtual = self.image_virtual_size(image_id)
        size = virtual if size_gib is None else size_gib * GIB
        if size < virtual:
            raise StorageError(f"root disk of {size_gib} GiB is smaller than image {image_id} "
                               f"({virtual} bytes)")
        with self.conn.ioctx(self.pool, f"create root disk of VM {vm_id}") as ioctx, \
                Reverter() as revert:
            try:
                rbd.RBD().clone(ioctx, image_name(image_id), BASE_SNAP, ioctx, name)
            except rbd.ImageExists:
                raise StorageError(f"VM {vm_id} already has a root disk") from None
            revert.add(lambda: images.remove_with_snapshots(ioctx, name), f"remove {name}")
            if size > virtual:
                with rbd.Image(ioctx, name) as img:
                    img.resize(size)
            revert.success()
        return DiskSpec(source=self._source(self.pool, name), format="raw", target="vda")

    def delete_vm_disks(self, vm_id: str) -> None:
        """Remove vm-<vm_id>-root with its snapshots; a no-op if absent. Fails (retryable)
        while a VM has it open."""
        name = root_disk_name(vm_id)
        with self.conn.ioctx(self.pool, f"delete disks of VM {vm_id}") as ioctx:
            images.remove_with_snapshots(ioctx, name)

    def existing_root_disk(self, vm_id: str) -> DiskSpec:
        """vm-<vm_id>-root as it is (see StorageDriver)."""
        if not self.vm_disk_exists(vm_id):
            raise StorageError(f"the root disk of VM {vm_id} ({root_disk_name(vm_id)} in pool "
                               f"{self.pool}) does not exist")
        return DiskSpec(source=self._source(self.pool, root_disk_name(vm_id)), format="raw",
                        target="vda")

    def vm_disk_exists(self, vm_id: str) -> bool:
        _, rbd = bindings()
        with self.conn.ioctx(self.pool, f"look up root disk of VM {vm_id}") as ioctx:
            try:
                with rbd.Image(ioctx, root_disk_name(vm_id), read_only=True):
                    return True
            except rbd.ImageNotFound:
                return False

    def root_disk_is_clone(self, vm_id: str) -> bool:
        """Whether the VM's root disk still has its image's snapshot as parent."""
        _, rbd = bindings()
        with self.conn.ioctx(self.pool, f"read root disk of VM {vm_id}") as ioctx:
            try:
                with rbd.Image(ioctx, root_disk_name(vm_id), read_only=True) as img:
                    img.parent_info()
                    return True
            except rbd.ImageNotFound:  # no such disk, or (from parent_info) no parent
                return False

    def flatten_root_disk(self, vm_id: str) -> None:
        """Copy the image's data into the VM's root disk, so it no longer depends on it.

        Afterwards the image may be deleted as far as this disk is concerned. Takes time
        proportional to the image's size; on failure the disk is still a valid clone.
        """
        _, rbd = bindings()
        with self.conn.ioctx(self.pool, f"flatten root disk of VM {vm_id}") as ioctx:
            try:
                with rbd.Image(ioctx, root_disk_name(vm_id)) as img:
                    img.flatten()
            except rbd.ImageNotFound:
                raise StorageError(f"VM {vm_id} has no root disk") from None
            except rbd.InvalidArgument:
                return  # not a clone (any more): nothing to flatten

    def free_bytes(self) -> int:
        usage = pool_usage(self.conn.mon_command("read pool usage", "df"))
        if self.pool not in usage:
            raise StorageError(f"pool {self.pool} is not in the cluster's df")
        return usage[self.pool].max_avail_bytes

    # --- volumes ---------------------------------------------------------------------

    def create_volume(self, volume_id: str, size_gib: int, pool: str | None = None) -> VolumeInfo:
        return self.volumes.create(volume_id, size_gib, pool)

    def delete_volume(self, volume_id: str) -> None:
        self.volumes.delete(volume_id)

    def resize_volume(self, volume_id: str, size_gib: int) -> None:
        self.volumes.resize(volume_id, size_gib)

    def snapshot_volume(self, volume_id: str, snap: str, *, quiesced: bool = False) -> None:
        self.volumes.snapshot(volume_id, snap, quiesced=quiesced)

    def rollback_volume(self, volume_id: str, snap: str, seq: int = 0) -> None:
        self.volumes.rollback(volume_id, snap, seq)

    def delete_volume_snapshot(self, volume_id: str, snap: str) -> None:
        self.volumes.delete_snapshot(volume_id, snap)

    def clone_volume(self, src_volume_id: str, snap: str, new_volume_id: str) -> VolumeInfo:
        return self.volumes.clone(src_volume_id, snap, new_volume_id)

    def list_volumes(self) -> list[VolumeInfo]:
        return self.volumes.list_all()

    def volume_disk(self, volume_id: str, target: str) -> DiskSpec:
        pool = self.volumes.locate(volume_id)
        return DiskSpec(source=self._source(pool, volume_name(volume_id)), format="raw",
                        target=target)

    def volume_of(self, disk: DiskSpec) -> str | None:
        src = disk.source
        if not isinstance(src, RbdSource) or src.pool not in self.volumes.pools:
            return None
        return volume_id_of(src.image)

    def health(self) -> StorageHealth:
        """Cluster health and the usage of this driver's pools.

        A client whose caps do not allow reading them gets status "UNKNOWN" and a detail
        saying so; an unreachable cluster raises a retryable StorageError.
        """
        code, health, err = self.conn.try_mon_command("read cluster health", "health")
        if code:
            status, detail = "UNKNOWN", f"cannot read cluster health: {err} (errno {code})"
            if code in (errno.EACCES, errno.EPERM):
                detail += f"; client.{self.user} lacks the mon caps for it"
        else:
            status, detail = health_summary(health)
        code, df, err = self.conn.try_mon_command("read pool usage", "df")
        usage = pool_usage(df) if not code else {}
        if code:
            detail = "; ".join(filter(None, [detail, f"cannot read pool usage: {err}"]))
        pools = tuple(usage[p] for p in self.volumes.pools if p in usage)
        return StorageHealth(status=status, detail=detail, pools=pools)
