"""The region's storage backend, as configured on the controller and handed to every node.

For Ceph the controller is given a ceph.conf and the keyring of a dedicated client
(never client.admin); nodes receive the monitors and the key over mutual TLS and
keep the key in memory only.
"""

from __future__ import annotations

import configparser
from pathlib import Path

from agent.protocol import RbdSettings, StorageSettings


class StorageConfigError(ValueError):
    """The storage settings cannot work; the message says which one and why."""


def _ini(path: Path, what: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    try:
        text = path.read_text()
    except OSError as e:
        raise StorageConfigError(f"cannot read the {what} {path}: {e.strerror}") from e
    try:
        parser.read_string(text)
    except configparser.Error as e:
        raise StorageConfigError(f"the {what} {path} does not parse: {e}") from e
    return parser


def mon_host_from_conf(conf: Path) -> str:
    """`mon_host` (or `mon host`) of the [global] section of a ceph.conf."""
    parser = _ini(conf, "ceph.conf")
    for key in ("mon_host", "mon host"):
        if parser.has_option("global", key):
            return parser.get("global", key).strip()
    raise StorageConfigError(f"{conf} has no mon_host in its [global] section")


def fsid_from_conf(conf: Path) -> str:
    """`fsid` of the [global] section of a ceph.conf."""
    parser = _ini(conf, "ceph.conf")
    if not parser.has_option("global", "fsid"):
        raise StorageConfigError(f"{conf} has no fsid in its [global] section")
    return parser.get("global", "fsid").strip()


def osd_vars(ceph_conf: Path | None, bootstrap_osd_keyring: Path | None) -> dict[str, str]:
    """The `ceph` role's cluster variables: fsid and monitors from `ceph_conf`, the key of
    client.bootstrap-osd from its keyring. Only those that are configured are returned
    (the role names what is missing); StorageConfigError if a file given is unreadable
    or lacks them."""
    found: dict[str, str] = {}
    if ceph_conf is not None:
        found.update(ceph_fsid=fsid_from_conf(ceph_conf),
                     ceph_mon_host=mon_host_from_conf(ceph_conf))
    if bootstrap_osd_keyring is not None:
        found["ceph_bootstrap_osd_key"] = key_from_keyring(bootstrap_osd_keyring,
                                                           "bootstrap-osd")
    return found


def key_from_keyring(keyring: Path, client: str) -> str:
    """The key of `client.<client>` in a keyring file."""
    parser = _ini(keyring, "keyring")
    section = f"client.{client}"
    if not parser.has_option(section, "key"):
        raise StorageConfigError(f"{keyring} holds no key for {section}")
    return parser.get(section, "key").strip()


def build(driver: str, ceph_conf: Path | None = None, ceph_keyring: Path | None = None,
          ceph_client: str = "vauban", ceph_pool: str = "vauban",
          ceph_volume_pools: tuple[str, ...] = (), region_tag: str = "region",
          heartbeat_interval_s: float = 2.0, fence_after_s: float = 20.0) -> StorageSettings:
    """Settings for `driver` ("localfs" or "rbd"); StorageConfigError names what is wrong.

    `region_tag` makes the name of the hypervisor secret unique to the region, so two
    regions whose nodes share a host never overwrite each other's key. Nodes write their
    storage heartbeat every `heartbeat_interval_s` and fence themselves after
    `fence_after_s` without controller and storage (controller.config.check_fence_timing).
    """
    if driver == "localfs":
        return StorageSettings(driver="localfs")
    if driver != "rbd":
        raise StorageConfigError(f"unknown storage driver {driver!r}; known: localfs, rbd")
    if ceph_conf is None or ceph_keyring is None:
        raise StorageConfigError("rbd storage needs VAUBAN_CEPH_CONF and VAUBAN_CEPH_KEYRING")
    if ceph_client == "admin":
        raise StorageConfigError("use a dedicated Ceph client with rbd caps, not client.admin")
    return StorageSettings(driver="rbd", rbd=RbdSettings(
        mon_host=mon_host_from_conf(ceph_conf),
        user=ceph_client,
        key=key_from_keyring(ceph_keyring, ceph_client),
        pool=ceph_pool,
        volume_pools=list(ceph_volume_pools or (ceph_pool,)),
        secret_usage=f"vauban-{region_tag}-ceph-client.{ceph_client}",
        heartbeat_interval_s=heartbeat_interval_s, fence_after_s=fence_after_s,
    ))
