"""Controller settings, from the command line or VAUBAN_* environment variables."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ControllerConfig:
    data_dir: Path
    database_url: str = ""  # default: SQLite in data_dir
    host: str = "127.0.0.1"
    port: int = 8443
    server_names: tuple[str, ...] = field(default_factory=tuple)  # extra names in the TLS cert
    node_down_after_s: float = 30.0  # a node silent this long is down
    cpu_allocation_ratio: float = 4.0  # vCPUs per host CPU the scheduler may place
    reserved_host_memory_mib: int = 512  # kept free for the host on every node
    disk_allocation_ratio: float = 1.0  # GiB of VM disks per GiB of storage (see docs/storage.md)
    threads: int = 64  # long-polling agents each hold one while they wait
    operation_silence_s: float = 120.0  # an operation fails when its node is silent this long
    storage: str = "localfs"  # or "rbd": every node then uses the Ceph cluster below
    ceph_conf: Path | None = None
    ceph_keyring: Path | None = None  # keyring of ceph_client (a dedicated client, not admin)
    ceph_client: str = "vauban"
    ceph_pool: str = "vauban"  # images and VM root disks
    ceph_volume_pools: tuple[str, ...] = ()  # pools volumes may use; default: ceph_pool
    max_image_bytes: int = 64 * 1024**3  # an upload declaring more is refused unread (413)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.disk_allocation_ratio) and self.disk_allocation_ratio > 0):
            raise ValueError(f"disk_allocation_ratio must be a positive number, "
                             f"not {self.disk_allocation_ratio}")
        if self.max_image_bytes < 1:
            raise ValueError(f"max_image_bytes must be a positive number of bytes, "
                             f"not {self.max_image_bytes}")

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'controller.db'}"

    @property
    def image_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def pki_dir(self) -> Path:
        return self.data_dir / "pki"

    @property
    def admin_password_file(self) -> Path:
        return self.data_dir / "admin-password"

    def tls_names(self) -> list[str]:
        names = ["localhost", "127.0.0.1", "::1", socket.gethostname()]
        if self.host not in ("0.0.0.0", "::"):
            names.insert(0, self.host)
        return list(dict.fromkeys([*names, *self.server_names]))

    @classmethod
    def from_env(cls, **overrides: object) -> ControllerConfig:
        """Settings from VAUBAN_* variables; keyword arguments win over the environment."""
        env = os.environ
        values: dict[str, object] = {
            "data_dir": Path(env.get("VAUBAN_DATA_DIR", "var/controller")).resolve(),
            "database_url": env.get("VAUBAN_DATABASE_URL", ""),
            "host": env.get("VAUBAN_HOST", "127.0.0.1"),
            "port": int(env.get("VAUBAN_PORT", "8443")),
            "server_names": tuple(n for n in env.get("VAUBAN_SERVER_NAMES", "").split(",") if n),
            "disk_allocation_ratio": _ratio(env, "VAUBAN_DISK_ALLOCATION_RATIO", 1.0),
            "storage": env.get("VAUBAN_STORAGE", "localfs"),
            "ceph_conf": Path(env["VAUBAN_CEPH_CONF"]) if env.get("VAUBAN_CEPH_CONF") else None,
            "ceph_keyring": Path(env["VAUBAN_CEPH_KEYRING"])
            if env.get("VAUBAN_CEPH_KEYRING") else None,
            "ceph_client": env.get("VAUBAN_CEPH_CLIENT", "vauban"),
            "ceph_pool": env.get("VAUBAN_CEPH_POOL", "vauban"),
            "ceph_volume_pools": tuple(
                p for p in env.get("VAUBAN_CEPH_VOLUME_POOLS", "").split(",") if p),
            "max_image_bytes": _count(env, "VAUBAN_MAX_IMAGE_BYTES", 64 * 1024**3),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


def _ratio(env: Mapping[str, str], name: str, default: float) -> float:
    """The number in `name`, or `default` when unset; ValueError naming the variable."""
    raw = env.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be a number, not {raw!r}") from None


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    """The whole number in `name`, or `default` when unset; ValueError naming the variable."""
    raw = env.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {raw!r}") from None
