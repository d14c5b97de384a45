"""Pure helpers of the RBD driver: object names, monitor addresses, Ceph JSON.

Naming in a pool:
    img-<image_id>          an image, complete once it has the protected snapshot "base"
    img-<image_id>.tmp-<n>  an image being imported (never visible under the final name)
    vm-<vm_id>-root         a VM's root disk, a clone of img-<image_id>@base
    vol-<volume_id>         a volume
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from agent.drivers.storage.base import PoolUsage, StorageError

BASE_SNAP = "base"
IMAGE_PREFIX = "img-"
VOLUME_PREFIX = "vol-"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SNAP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_id(kind: str, value: str) -> str:
    """Ids become parts of RBD names: letters, digits and `._-`, at most 96 characters."""
    if not _SAFE_ID.match(value) or ".." in value:
        raise StorageError(f"invalid {kind} id {value!r}")
    return value


def check_snap(name: str) -> str:
    """A snapshot name a user may choose ("base" and odd characters are refused)."""
    if not _SNAP.match(name):
        raise StorageError(f"invalid snapshot name {name!r}")
    return name


def image_name(image_id: str) -> str:
    return IMAGE_PREFIX + check_id("image", image_id)


def temp_image_name(image_id: str) -> str:
    """A fresh name for an image being imported; unique per call."""
    return f"{image_name(image_id)}.tmp-{secrets.token_hex(4)}"


_TEMP_IMAGE = re.compile(r"^img-[A-Za-z0-9][A-Za-z0-9._-]{0,95}\.tmp-[0-9a-f]{8}$")


def is_temp_image_name(name: str) -> bool:
    """Whether `name` is one `temp_image_name` makes (an import's, never a final name)."""
    return _TEMP_IMAGE.match(name) is not None


def root_disk_name(vm_id: str) -> str:
    return f"vm-{check_id('VM', vm_id)}-root"


def volume_name(volume_id: str) -> str:
    return VOLUME_PREFIX + check_id("volume", volume_id)


def volume_id_of(name: str) -> str | None:
    """The volume id an RBD image name stands for, or None if it is not a volume's."""
    if not name.startswith(VOLUME_PREFIX):
        return None
    vid = name[len(VOLUME_PREFIX):]
    return vid if _SAFE_ID.match(vid) and ".." not in vid else None


_ADDR = re.compile(r"^(?:(?P<kind>v1|v2|any):)?(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:/\[\]]+))"
                   r"(?::(?P<port>\d+))?(?:/\d+)?$")


def _split_mon_host(mon_host: str) -> list[list[str]]:
    """Monitors of a `mon_host` string, each as the list of its addresses."""
    mons: list[list[str]] = []
    i, s = 0, mon_host.strip()
    while i < len(s):
        c = s[i]
        if c in " ,;\t":
            i += 1
        elif s.startswith(("[v1:", "[v2:", "[any:"), i):  # one monitor's address vector
            end = s.find("]", i)
            # An IPv6 address inside the vector has brackets of its own.
            while end != -1 and s.count("[", i, end) > s.count("]", i, end) + 1:
                end = s.find("]", end + 1)
            if end == -1:
                raise StorageError(f"unparsable mon_host {mon_host!r}")
            mons.append([a for a in re.split(r",(?![^\[]*\])", s[i + 1:end]) if a])
            i = end + 1
        else:
            m = re.match(r"(?:\[[^\]]*\]|[^\s,;\[])+", s[i:])
            assert m is not None  # s[i] is none of the separators
            mons.append([m.group(0)])
            i += m.end()
    return mons


def parse_mon_host(mon_host: str) -> tuple[tuple[str, int], ...]:
    """(host, port) of each monitor, as libvirt and QEMU name them.

    Of a monitor's addresses the msgr2 one is taken (librados tries msgr2 first on an
    address without a prefix); a bare address without port gets 3300, msgr2's port.
    """
    monitors = []
    for addrs in _split_mon_host(mon_host):
        parsed = []
        for a in addrs:
            m = _ADDR.match(a.strip())
            if m is None:
                raise StorageError(f"unparsable monitor address {a!r} in {mon_host!r}")
            kind = m.group("kind") or "any"
            default = 6789 if kind == "v1" else 3300
            port = int(m.group("port") or default)
            parsed.append((kind, m.group("ip6") or m.group("host"), port))
        parsed.sort(key=lambda a: {"v2": 0, "any": 1, "v1": 2}[a[0]])
        monitors.append((parsed[0][1], parsed[0][2]))
    if not monitors:
        raise StorageError("mon_host names no monitor")
    return tuple(monitors)


def pool_usage(df: dict[str, Any]) -> dict[str, PoolUsage]:
    """Per pool, bytes stored and bytes still available, from `ceph df` JSON."""
    out = {}
    for p in df.get("pools", []):
        st = p.get("stats", {})
        used = st.get("stored", st.get("bytes_used", 0))
        out[p["name"]] = PoolUsage(p["name"], int(used), int(st.get("max_avail", 0)))
    return out


def health_summary(health: dict[str, Any]) -> tuple[str, str]:
    """(status, detail) of `ceph health` or `ceph status` JSON; detail names every check."""
    health = health.get("health", health)
    status = str(health.get("status", "UNKNOWN"))
    checks = health.get("checks", {})
    detail = "; ".join(f"{name}: {c.get('summary', {}).get('message', '')}"
                       for name, c in sorted(checks.items()))
    return status, detail
