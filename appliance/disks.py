"""Which disk the node is installed on: the candidates, the operator's rule, and the
rule that a disk holding data is never taken unless the answers say `wipe = true`.

Rules (the answers' `disk`):
- `auto`: the one non-removable disk of at least MIN_DISK_BYTES that holds no data
  (with wipe = true: the one non-removable disk of that size, data or not);
- a device path: `/dev/disk/by-id/nvme-SAMSUNG_..._S4EW`, `/dev/sda`;
- `serial:S4EWNX0R` (exact), `model:SAMSUNG` (part of the model, any case);
- `size>=400G` / `size<=2T` (G = 10^9 bytes, T = 10^12, as disks are labelled).
A rule that matches several disks is refused with their names, never guessed.
The live medium's disk and the answers medium's disk are never candidates.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.cmd import run_status
from hardware.disks import probe_disks
from hardware.sysfs import Root

MIN_DISK_BYTES = 4 * 1024**3
MIB = 1024 * 1024
SIZE_RULE = re.compile(r"^size(>=|<=)(\d+(?:\.\d+)?)([GT])$")
UNITS = {"G": 10**9, "T": 10**12}


class DiskError(Exception):
    """No disk can be chosen; the message says why, naming the disks considered."""


@dataclass(frozen=True)
class Rule:
    kind: str  # auto | path | serial | model | size>= | size<=
    value: str = ""
    size: int = 0


@dataclass(frozen=True)
class Candidate:
    """A whole disk the node could be installed on."""

    name: str  # kernel name: sda, nvme0n1
    path: Path  # /dev/sda
    size_bytes: int
    removable: bool
    model: str | None
    serial: str | None
    by_id: tuple[str, ...] = ()
    in_use: str | None = None  # mounted, holders (LVM, RAID): never taken, even with wipe

    def describe(self) -> str:
        parts = [f"{self.size_bytes / 10**9:.0f} GB"]
        parts += [p for p in (self.model, self.serial and f"serial {self.serial}") if p]
        if self.removable:
            parts.append("removable")
        return f"{self.path} ({', '.join(parts)})"


def parse_rule(text: str) -> Rule:
    """The rule `text` stands for. DiskError when it is none of the forms above."""
    if text == "auto":
        return Rule("auto")
    if text.startswith("/dev/") and ".." not in text:
        return Rule("path", text)
    for kind in ("serial", "model"):
        if text.startswith(f"{kind}:") and len(text) > len(kind) + 1:
            return Rule(kind, text[len(kind) + 1:])
    m = SIZE_RULE.match(text)
    if m:
        return Rule(f"size{m.group(1)}", size=int(float(m.group(2)) * UNITS[m.group(3)]))
    raise DiskError(f"{text!r} is not a disk rule (auto, /dev/disk/by-id/..., serial:X, "
                    "model:X, size>=400G)")


def _parent_disk(sys_root: Path, dev: str) -> str | None:
    """The whole disk's kernel name for /dev/<dev> (itself when it is a whole disk)."""
    name = Path(os.path.realpath(dev)).name
    node = sys_root / "sys/class/block" / name
    if not node.exists():
        return None
    if (node / "partition").exists():
        return Path(os.path.realpath(node)).parent.name
    return name


def media_disks(root: Path, label_device: str | None) -> set[str]:
    """Kernel names of the disks carrying the live medium (mounted at /run/live/medium)
    and the answers medium (`label_device`): never install targets."""
    names: set[str] = set()
    try:
        mounts = (root / "proc/mounts").read_text().splitlines()
    except OSError:
        mounts = []
    devices = [f.split()[0] for f in mounts if len(f.split()) > 1
               and f.split()[1] == "/run/live/medium"]
    for dev in [*devices, *([label_device] if label_device else [])]:
        parent = _parent_disk(root, dev)
        if parent:
            names.add(parent)
    return names


def _by_id(root: Path) -> dict[str, list[str]]:
    links: dict[str, list[str]] = {}
    folder = root / "dev/disk/by-id"
    if folder.is_dir():
        for link in sorted(folder.iterdir()):
            links.setdefault(Path(os.path.realpath(link)).name, []).append(str(link))
    return links


def list_candidates(root: Path = Path("/"), exclude: set[str] | None = None) -> list[Candidate]:
    """The whole disks of this machine (software devices, `exclude` and empty ones left
    out), with what the hardware probes found about each."""
    by_id = _by_id(root)
    out = []
    for disk in probe_disks(Root(str(root))):
        if disk.name in (exclude or set()) or disk.size_bytes == 0:
            continue
        busy = disk.in_use_reason
        # partitions are data, judged by holds_data (wipe may allow); the rest never is
        in_use = None if busy is None or busy.startswith(("has partitions", "removable")) \
            else busy
        out.append(Candidate(name=disk.name, path=Path("/dev") / disk.name,
                             size_bytes=disk.size_bytes, removable=disk.removable,
                             model=disk.model, serial=disk.serial,
                             by_id=tuple(by_id.get(disk.name, [])), in_use=in_use))
    return out


def holds_data(path: Path) -> str | None:
    """Why the disk at `path` holds data (a partition table, a signature, non-zero bytes
    in its first or last MiB), or None when it is blank. Reads only."""
    status, out = run_status(["blkid", "-p", "-o", "export", str(path)])
    if status == 0:
        fields = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        if "PTTYPE" in fields:
            return f"holds a {fields['PTTYPE']} partition table"
        if "TYPE" in fields:
            return f"holds a {fields['TYPE']} signature"
    status, out = run_status(["wipefs", "--no-act", "--noheadings", "--output", "TYPE",
                              str(path)])
    if status == 0 and out.strip():
        return f"holds signatures: {', '.join(sorted(set(out.split())))}"
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        for where, offset in (("first", 0), ("last", max(0, size - MIB))):
            f.seek(offset)
            if f.read(MIB).strip(b"\0"):
                return f"has non-zero bytes in its {where} MiB"
    return None


def _matches(rule: Rule, c: Candidate) -> bool:
    if rule.kind == "path":
        return os.path.realpath(rule.value) == os.path.realpath(c.path) or \
            rule.value in (str(c.path), *c.by_id)
    if rule.kind == "serial":
        return c.serial == rule.value
    if rule.kind == "model":
        return rule.value.lower() in (c.model or "").lower()
    if rule.kind == "size>=":
        return c.size_bytes >= rule.size
    if rule.kind == "size<=":
        return c.size_bytes <= rule.size
    return not c.removable and c.size_bytes >= MIN_DISK_BYTES  # auto


def choose(rule_text: str, candidates: list[Candidate], wipe: bool,
           data: Callable[[Candidate], str | None]) -> Candidate:
    """The disk `rule_text` designates among `candidates`. `data(c)` says why c holds
    data (None: blank). DiskError, naming the disks and why each was left out, when
    none or several remain. Reads only."""
    rule = parse_rule(rule_text)
    matching = [c for c in candidates if _matches(rule, c)]
    if not matching:
        seen = "; ".join(c.describe() for c in candidates) or "none"
        raise DiskError(f"no disk matches the rule {rule_text!r} (disks seen: {seen})")
    refused: list[str] = []
    fit = []
    for c in matching:
        why = c.in_use or (None if wipe else data(c))
        if why is None:
            fit.append(c)
        else:
            refused.append(f"{c.describe()} {why}")
    if not fit:
        hint = "" if wipe else " (set wipe = true in the answers to install over its data)"
        raise DiskError(f"no usable disk for the rule {rule_text!r}: {'; '.join(refused)}{hint}")
    if len(fit) > 1:
        raise DiskError(f"the rule {rule_text!r} matches several disks: "
                        f"{'; '.join(c.describe() for c in fit)}; name one "
                        "(/dev/disk/by-id/..., serial:X)")
    return fit[0]
