"""Fetching and unpacking the Debian packages the test guest is made of.

Uses only the host's apt configuration (`apt-cache`, `apt-get download`) and
`dpkg-deb -x`; nothing is installed on the host. Downloads and extractions
land in a cache directory, each under a name that includes the package
version, and appear there atomically (temporary name, then rename).
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

KERNEL_META = "linux-image-cloud-amd64"
BUSYBOX = "busybox-static"
SYSLINUX_COMMON = "syslinux-common"
APT_OPTS = ["-o", "APT::Sandbox::User=root", "-q"]


class PackageError(Exception):
    """A package could not be resolved, downloaded or unpacked."""


@dataclass(frozen=True, order=True)
class PackageRef:
    """A Debian binary package at one exact version."""

    name: str
    version: str

    @property
    def slug(self) -> str:
        """File-name form `name_version`, with `:` quoted as apt quotes it (`%3a`)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}"


@dataclass(frozen=True)
class GuestPackages:
    """The exact packages a test guest is built from."""

    kernel: PackageRef
    busybox: PackageRef
    syslinux: PackageRef

    @property
    def kernel_release(self) -> str:
        """The kernel release (`uname -r`), e.g. `6.1.0-56-cloud-amd64`."""
        return self.kernel.name.removeprefix("linux-image-")

    def to_json(self) -> dict[str, str]:
        """Return {package name: version} for stamps and records."""
        return {r.name: r.version for r in (self.kernel, self.busybox, self.syslinux)}


# ---------------------------------------------------------------- pure parsing


def parse_candidates(policy_output: str) -> dict[str, str | None]:
    """Return {package: candidate version or None} from `apt-cache policy A B ...` output.

    Packages apt does not know at all are absent from the output, hence from the result.
    """
    result: dict[str, str | None] = {}
    current: str | None = None
    for line in policy_output.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith(":"):
            current = line.rstrip()[:-1].split(":")[0]
            result[current] = None
            continue
        m = re.fullmatch(r"\s+Candidate:\s*(\S+)\s*", line)
        if m and current is not None:
            result[current] = None if m.group(1) == "(none)" else m.group(1)
    return result


def control_field(stanza: str, field: str) -> str | None:
    """Return the value of `field` in the first deb822 stanza of `stanza` (continuations joined)."""
    lines = stanza.split("\n\n", 1)[0].splitlines()
    for i, line in enumerate(lines):
        if line.lower().startswith(field.lower() + ":"):
            parts = [line.split(":", 1)[1].strip()]
            for cont in lines[i + 1 :]:
                if not cont.startswith((" ", "\t")):
                    break
                parts.append(cont.strip())
            return " ".join(p for p in parts if p)
    return None


def kernel_from_depends(depends: str) -> PackageRef:
    """Return the `linux-image-<release>` package (and its `=` version) in a Depends value.

    Raises PackageError when no such dependency is there or it has no exact version.
    """
    for clause in depends.split(","):
        first = clause.split("|")[0].strip()
        m = re.fullmatch(r"(linux-image-\d\S*)\s*\(\s*=\s*([^)\s]+)\s*\)", first)
        if m:
            return PackageRef(m.group(1), m.group(2))
    raise PackageError(f"no 'linux-image-<release> (= version)' in Depends: {depends!r}")


# ---------------------------------------------------------------- apt / dpkg


def _run(cmd: list[str], cwd: pathlib.Path | None = None) -> str:
    """Run `cmd`; return its stdout. Raises PackageError (with stderr) when it fails."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PackageError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def candidate_versions(names: list[str]) -> dict[str, str | None]:
    """Return apt's candidate version of each of `names` from the local lists (no network)."""
    found = parse_candidates(_run(["apt-cache", "policy", *names]))
    return {n: found.get(n) for n in names}


def _resolve_from_lists() -> GuestPackages:
    """Resolve the guest's packages from apt's local lists; PackageError if they lack one."""
    versions = candidate_versions([KERNEL_META, BUSYBOX, SYSLINUX_COMMON])
    missing = [n for n, v in versions.items() if v is None]
    if missing:
        raise PackageError(f"apt has no candidate for {', '.join(missing)}")
    show = _run(["apt-cache", "show", f"{KERNEL_META}={versions[KERNEL_META]}"])
    depends = control_field(show, "Depends")
    if depends is None:
        raise PackageError(f"{KERNEL_META} {versions[KERNEL_META]} has no Depends")
    return GuestPackages(
        kernel=kernel_from_depends(depends),
        busybox=PackageRef(BUSYBOX, str(versions[BUSYBOX])),
        syslinux=PackageRef(SYSLINUX_COMMON, str(versions[SYSLINUX_COMMON])),
    )


def apt_update() -> None:
    """Run `apt-get update`; PackageError if it fails."""
    _run(["apt-get", *APT_OPTS, "update"])


def deb_path(cache: pathlib.Path, ref: PackageRef) -> pathlib.Path:
    """Where the .deb of `ref` lives in the cache."""
    return cache / "debs" / f"{ref.slug}.deb"


def download(cache: pathlib.Path, ref: PackageRef) -> pathlib.Path:
    """Return the cached .deb of `ref`, fetching it with `apt-get download` if absent.

    After success the .deb is complete at `deb_path(cache, ref)` and its control
    data names `ref`. After failure (PackageError) no partial file is there.
    """
    dest = deb_path(cache, ref)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=dest.parent) as tmp:
        _run(["apt-get", *APT_OPTS, "download", f"{ref.name}={ref.version}"],
             cwd=pathlib.Path(tmp))
        got = sorted(pathlib.Path(tmp).glob("*.deb"))
        if len(got) != 1:
            raise PackageError(f"apt-get download {ref.name} left {len(got)} .deb files")
        fields = _run(["dpkg-deb", "-f", str(got[0]), "Package", "Version"])
        if (control_field(fields, "Package"), control_field(fields, "Version")) != (
            ref.name, ref.version
        ):
            raise PackageError(f"downloaded {got[0].name} is not {ref.name} {ref.version}")
        got[0].replace(dest)
    return dest


def extract(
    cache: pathlib.Path,
    ref: PackageRef,
    deb: pathlib.Path,
    finish: Callable[[pathlib.Path], None] | None = None,
) -> pathlib.Path:
    """Return the directory holding `deb` unpacked (`dpkg-deb -x`), unpacking it if absent.

    `finish`, if given, runs on the fresh tree before it is published (e.g.
    depmod). After success the directory is complete; after failure nothing
    is left under its name.
    """
    dest = cache / "pkgs" / ref.slug
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{ref.slug}.", dir=dest.parent))
    try:
        _run(["dpkg-deb", "-x", str(deb), str(tmp)])
        if finish is not None:
            finish(tmp)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def depmod(root: pathlib.Path, release: str) -> None:
    """Generate modules.dep & co. for kernel `release` unpacked under `root`."""
    _run(["depmod", "-b", str(root), release])


# ---------------------------------------------------------------- resolution with fallbacks


def _record_path(cache: pathlib.Path) -> pathlib.Path:
    """The file recording the packages of the last successful fetch."""
    return cache / "packages.json"


def _recorded(cache: pathlib.Path) -> GuestPackages | None:
    """Return the packages last fetched into `cache` if all their .debs are still there."""
    try:
        data = json.loads(_record_path(cache).read_text())
        pkgs = GuestPackages(
            kernel=PackageRef(**data["kernel"]),
            busybox=PackageRef(**data["busybox"]),
            syslinux=PackageRef(**data["syslinux"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    refs = (pkgs.kernel, pkgs.busybox, pkgs.syslinux)
    return pkgs if all(deb_path(cache, r).is_file() for r in refs) else None


def record(cache: pathlib.Path, pkgs: GuestPackages) -> None:
    """Record `pkgs` as the last successful fetch into `cache` (atomic replace)."""
    data = {
        "kernel": vars(pkgs.kernel),
        "busybox": vars(pkgs.busybox),
        "syslinux": vars(pkgs.syslinux),
    }
    tmp = _record_path(cache).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(_record_path(cache))


def fetch_all(cache: pathlib.Path, pkgs: GuestPackages) -> dict[str, pathlib.Path]:
    """Download the .debs of `pkgs` (those not cached); return {package name: .deb path}."""
    return {r.name: download(cache, r) for r in (pkgs.kernel, pkgs.busybox, pkgs.syslinux)}


def resolve_and_fetch(cache: pathlib.Path) -> tuple[GuestPackages, dict[str, pathlib.Path]]:
    """Resolve the guest's packages with apt and make sure their .debs are in `cache`.

    Tries the local apt lists first; if they lack a package or a download fails,
    runs `apt-get update` once and tries again. If that fails too (offline), falls
    back to the packages of the last successful fetch when their .debs are cached.
    After success `cache/packages.json` records the packages returned.
    Raises PackageError when none of this works.
    """
    errors: list[str] = []
    for attempt in range(2):
        try:
            if attempt:
                apt_update()
            pkgs = _resolve_from_lists()
            debs = fetch_all(cache, pkgs)
            record(cache, pkgs)
            return pkgs, debs
        except PackageError as e:
            errors.append(str(e))
    fallback = _recorded(cache)
    if fallback is not None:
        return fallback, fetch_all(cache, fallback)
    raise PackageError("cannot get the test guest's packages: " + "; ".join(errors))
