"""Whether bytes are a guest disk image a region may give QEMU: raw, or a qcow2 that stands alone.

One decision, made the same way by the controller when an image is uploaded and by
each node before it stores the bytes it fetched (a node trusts no earlier check).

What is accepted
- **qcow2**: a version 2 or 3 qcow2 header that names no backing file, no external
  data file, no encryption, and no incompatible feature beyond those QEMU documents
  (dirty, corrupt, compression type, extended L2). Each refused feature makes QEMU
  open or need something outside the image: a backing file or data file is a path
  on the node (a guest could read any host file as its disk), encryption needs a key
  the region does not hold.
- **raw**: at least `RAW_MIN_BYTES` (1 MiB), a whole number of 512-byte sectors,
  and not recognisably a container format (qcow2, vmdk, vhd, vhdx, vdi, qed, luks).
  A partition table (MBR/GPT) or an ISO 9660 volume is the content of a raw disk
  and is accepted.
- nothing else: the file must be the format it is declared as.

How it is inspected, and why so
`qemu-img info` is no safe probe of an untrusted file: to report on a qcow2 it opens
the backing file and the external data file the header names (CVE-2024-32498 in
OpenStack). So the headers are parsed first in Python by OpenStack's format
inspector (`oslo_utils.imageutils.format_inspector`, written for exactly this after
that CVE and maintained with Glance, Nova and Cinder), which reads only the bytes
given to it and recognises the other formats a file may pretend to be. Only a file
that passed is then read by `qemu-img info` with the format given explicitly
(`-f`, never probed) and under resource limits (1 GiB of address space, 30 s of CPU:
OpenStack's limits), as a second opinion: it must confirm the format, report no
reference to another file and no encryption, and agree on the virtual size.

`DiskRefused` says what is wrong with the image, in words for the operator;
`DiskCheckUnavailable` says the check itself could not run (fail closed: the caller
refuses the image, and may retry).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from oslo_utils.imageutils import format_inspector as fi

SECTOR = 512
RAW_MIN_BYTES = 1024 * 1024
FORMATS = ("raw", "qcow2")
RAW_CONTENT = frozenset({"gpt", "iso"})  # what a raw disk may hold; every other format refused
QEMU_IMG_LIMITS = ("--as=1073741824", "--cpu=30")  # OpenStack's qemu-img limits
QEMU_IMG_TIMEOUT = 120.0
READ_CHUNK = 64 * 1024
_QCOW2_CRYPT_METHOD = slice(32, 36)  # uint32: 0 none, 1 AES, 2 LUKS
_QCOW2_REFUSALS = {
    "backing_file": "it has a backing file, which QEMU would open from the node's filesystem",
    "data_file": "it names an external data file, which QEMU would open from the node's "
                 "filesystem as the guest's disk",
    "unknown_features": "it uses a qcow2 version or incompatible feature this region does "
                        "not know",
}


class DiskRefused(ValueError):
    """The bytes are not an image the region accepts; the message says why."""


class DiskCheckUnavailable(RuntimeError):
    """The check could not run (qemu-img or prlimit missing, or timed out)."""


@dataclass(frozen=True)
class DiskFacts:
    """What an accepted image is: its format and the size of the disk it gives a guest."""

    format: Literal["raw", "qcow2"]
    virtual_size: int


class DiskProbe:
    """Inspects an image's bytes as they stream by, holding only the headers it needs.

    Feed every chunk in order with `feed`, then call `verdict` with the total size.
    The inspectors stop reading once each has decided, so a stream costs only a few
    header reads however large it is.
    """

    def __init__(self, claimed: str) -> None:
        if claimed not in FORMATS:
            raise DiskRefused(f"disk_format '{claimed}' is not accepted: only raw and qcow2")
        self.claimed: Literal["raw", "qcow2"] = "qcow2" if claimed == "qcow2" else "raw"
        self._inspectors = {name: cls() for name, cls in fi.ALL_FORMATS.items()
                            if name != "raw"}
        self._failed: set[str] = set()
        self._finished = False

    @property
    def decided(self) -> bool:
        """Whether every inspector has what it needs (more bytes change nothing)."""
        return all(n in self._failed or i.complete for n, i in self._inspectors.items())

    def feed(self, chunk: bytes) -> None:
        if self.decided or not chunk:
            return
        for name, inspector in self._inspectors.items():
            if name in self._failed:
                continue
            try:
                inspector.eat_chunk(chunk)
            except Exception:  # bytes this inspector cannot parse are not its format
                self._failed.add(name)

    def verdict(self, size: int) -> DiskFacts:
        """The facts of an acceptable image of `size` bytes in all, or DiskRefused."""
        found = self._formats_found()
        if self.claimed == "qcow2":
            if found != ["qcow2"]:
                raise DiskRefused(f"disk_format is 'qcow2' but the file is {_describe(found)}")
            return DiskFacts("qcow2", self._check_qcow2())
        containers = [f for f in found if f not in RAW_CONTENT]
        if containers:
            hint = ("declare it as disk_format 'qcow2'" if containers == ["qcow2"]
                    else "convert it first (qemu-img convert -O qcow2)")
            raise DiskRefused(f"disk_format is 'raw' but the file is {_describe(containers)}; "
                              f"{hint}")
        check_raw_size(size)
        return DiskFacts("raw", size)

    def _formats_found(self) -> list[str]:
        if not self._finished:
            self._finished = True
            for inspector in self._inspectors.values():
                inspector.finish()
        return sorted(n for n, i in self._inspectors.items()
                      if n not in self._failed and i.complete and i.format_match)

    def _check_qcow2(self) -> int:
        """The virtual size of a qcow2 that refers to nothing outside itself."""
        qcow = self._inspectors["qcow2"]
        try:
            qcow.safety_check()
        except fi.SafetyCheckFailed as e:
            reasons = [_QCOW2_REFUSALS.get(name, f"{name}: {exc}")
                       for name, exc in sorted(e.failures.items())]
            raise DiskRefused("qcow2 image refused: " + "; ".join(reasons)) from None
        except fi.ImageFormatError as e:
            raise DiskRefused(f"unreadable qcow2 header: {e}") from None
        (crypt,) = struct.unpack(">I", qcow.region("header").data[_QCOW2_CRYPT_METHOD])
        if crypt:
            raise DiskRefused("qcow2 image refused: it is encrypted, and QEMU would need a "
                              "key the region does not hold")
        return int(qcow.virtual_size)


def check_raw_size(size: int) -> None:
    """DiskRefused unless `size` bytes make a raw disk: non-empty, whole sectors, >= 1 MiB."""
    if size == 0:
        raise DiskRefused("the image is empty")
    if size % SECTOR:
        raise DiskRefused(f"a raw image is a whole number of {SECTOR}-byte sectors; this one "
                          f"is {size} bytes ({size % SECTOR} left over)")
    if size < RAW_MIN_BYTES:
        raise DiskRefused(f"a raw image is at least {RAW_MIN_BYTES} bytes (1 MiB); this one "
                          f"is {size} bytes")


def _describe(found: list[str]) -> str:
    if not found or set(found) <= RAW_CONTENT:
        return "raw"
    return " and ".join(f"a {f} image" for f in found)


def check_file(path: Path, claimed: str) -> DiskFacts:
    """Inspect a file's headers, then confirm with qemu-img; the facts, or DiskRefused.

    Reads only what the inspectors need (the file's headers), and starts qemu-img only
    on a file whose headers passed.
    """
    probe = DiskProbe(claimed)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        while not probe.decided and (chunk := f.read(READ_CHUNK)):
            probe.feed(chunk)
    facts = probe.verdict(size)
    confirm_with_qemu_img(path, facts)
    return facts


def confirm_with_qemu_img(path: Path, facts: DiskFacts) -> None:
    """qemu-img, told the format, must read the file as `facts` say and see no other file.

    Call it only on a file `DiskProbe` accepted: qemu-img opens what a header names.
    """
    info = _qemu_img_info(path, facts.format)
    data = info.get("format-specific", {}).get("data", {})
    refs: list[str] = [k for k in ("backing-filename", "full-backing-filename") if k in info]
    refs += ["data-file"] if "data-file" in data else []
    if refs:
        raise DiskRefused(f"qemu-img reports a reference to another file ({', '.join(refs)})")
    if info.get("encrypted") or "encrypt" in data:
        raise DiskRefused("qemu-img reports the image is encrypted")
    if info.get("format") != facts.format:
        raise DiskRefused(f"qemu-img reads the file as {info.get('format')}, "
                          f"not {facts.format}")
    if int(info.get("virtual-size", -1)) != facts.virtual_size:
        raise DiskRefused(f"the image's header says {facts.virtual_size} bytes but qemu-img "
                          f"reads {info.get('virtual-size')}")


def _qemu_img_info(path: Path, fmt: str) -> dict[str, Any]:
    argv = ["prlimit", *QEMU_IMG_LIMITS, "--", "qemu-img", "info", "-U", "--output=json",
            "-f", fmt, str(path)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=QEMU_IMG_TIMEOUT,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DiskCheckUnavailable(f"qemu-img info could not check the image: {e}") from e
    if proc.returncode in (126, 127):  # prlimit could not run qemu-img: no verdict on the file
        raise DiskCheckUnavailable(f"qemu-img could not be run: {proc.stderr.strip()}")
    if proc.returncode != 0:
        raise DiskRefused(f"qemu-img cannot read the file as {fmt}: {proc.stderr.strip()}")
    try:
        info: dict[str, Any] = json.loads(proc.stdout)
    except ValueError as e:
        raise DiskCheckUnavailable(f"unreadable qemu-img info output: {e}") from e
    return info
