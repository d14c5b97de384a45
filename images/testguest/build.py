"""Build the Vauban test guest: a small raw disk image that boots under SeaBIOS.

    python -m images.testguest.build [--out var/images/testguest.raw]
                                     [--cache var/cache/testguest] [--force]

Made only from Debian packages (fetched with `apt-get download`, unpacked
with `dpkg-deb -x`, never installed): the cloud kernel that
`linux-image-cloud-amd64` depends on, `busybox-static` and `syslinux-common`
(for mbr.bin). The disk is an MBR plus one active FAT16 partition holding
SYSLINUX, the kernel, an initramfs (busybox + a few modules + init.sh as
/init) and syslinux.cfg (serial console, no prompt, no timeout). No root
mounts or loop devices are used.

Host tools the build runs (Debian packages to install):
  - apt, dpkg   apt-cache, apt-get download, dpkg-deb (always present on Debian)
  - kmod        depmod (modules.dep is not shipped in Debian kernel packages)
  - dosfstools  mkfs.fat
  - mtools      mcopy (also used by the installer below)
  - syslinux    `syslinux --install` (the mtools-based installer: works on a file)
The initramfs cpio and the MBR are written in Python (no cpio, no fdisk).

The build is cached: downloads and unpacked packages stay in the cache
directory, and the output is rebuilt only when `<out>.stamp` does not match
the inputs (package versions, builder sources, host syslinux version). A
rebuild replaces the output atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from images.testguest import cpio, debs, disk
from images.testguest.modules import load_order, parse_modules_builtin, parse_modules_dep

STAMP_FORMAT = 1
DEFAULT_OUT = pathlib.Path("var/images/testguest.raw")
DEFAULT_CACHE = pathlib.Path("var/cache/testguest")
SOURCE_DIR = pathlib.Path(__file__).resolve().parent
INIT_SCRIPT = SOURCE_DIR / "init.sh"

# Modules /init loads (with their dependencies). Required ones fail the build
# when missing; optional ones let the seed also be found on an IDE/SCSI CD-ROM
# or a virtio-scsi disk.
REQUIRED_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "isofs", "button", "evdev")
OPTIONAL_MODULES = ("virtio_scsi", "ata_piix", "ahci", "sd_mod", "sr_mod")

DIRECTORIES = (
    "bin", "dev", "etc", "etc/testguest", "lib", "lib/modules", "mnt", "proc", "root",
    "run", "sys", "tmp", "usr",
)
SYMLINKS = {"sbin": "bin", "usr/bin": "../bin", "usr/sbin": "../bin"}


class BuildError(Exception):
    """The test guest could not be built; the previous output (if any) is untouched."""


@dataclass(frozen=True)
class BuildResult:
    """What `build` did: the image path, whether it was (re)built, and how long it took."""

    image: pathlib.Path
    built: bool
    seconds: float


# ---------------------------------------------------------------- pure pieces


def applet_links(applets: list[str]) -> dict[str, str]:
    """Return {`bin/<applet>`: `busybox`} for every applet except busybox itself."""
    return {f"bin/{a}": "busybox" for a in sorted(set(applets)) if a and a != "busybox"}


def stamp_data(
    pkgs: debs.GuestPackages, sources_sha256: str, syslinux_version: str
) -> dict[str, object]:
    """Return the stamp describing every input of the image (JSON-serialisable)."""
    return {
        "format": STAMP_FORMAT,
        "packages": pkgs.to_json(),
        "sources_sha256": sources_sha256,
        "host_syslinux": syslinux_version,
        "cmdline": disk.KERNEL_CMDLINE,
        "modules": {"required": list(REQUIRED_MODULES), "optional": list(OPTIONAL_MODULES)},
    }


def parent_dirs(paths: list[str]) -> list[str]:
    """Return every proper ancestor directory of `paths` (relative), parents first."""
    dirs: set[str] = set()
    for p in paths:
        parts = p.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return sorted(dirs, key=lambda d: (d.count("/"), d))


# ---------------------------------------------------------------- inputs


def sources_digest() -> str:
    """Return a sha256 over the builder's own files (init.sh and the .py modules)."""
    h = hashlib.sha256()
    for path in sorted(SOURCE_DIR.glob("*.py")) + [INIT_SCRIPT]:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def host_syslinux_version() -> str:
    """Return the first line of `syslinux --version` (the installer writes its ldlinux.sys)."""
    try:
        proc = subprocess.run(["syslinux", "--version"], capture_output=True, text=True)
    except FileNotFoundError as e:
        raise BuildError("host tool 'syslinux' is missing (apt-get install syslinux)") from e
    text = (proc.stdout + proc.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def check_host_tools() -> None:
    """Raise BuildError naming every missing host tool."""
    tools = {"apt-get": "apt", "apt-cache": "apt", "dpkg-deb": "dpkg", "depmod": "kmod",
             "mkfs.fat": "dosfstools", "mcopy": "mtools", "syslinux": "syslinux"}
    missing = sorted({pkg for tool, pkg in tools.items() if shutil.which(tool) is None})
    if missing:
        raise BuildError("missing host packages: " + " ".join(missing))


# ---------------------------------------------------------------- initramfs


def busybox_applets(busybox: pathlib.Path) -> list[str]:
    """Return the applet names of the (static, amd64) busybox binary at `busybox`."""
    out = subprocess.run([str(busybox), "--list"], check=True, capture_output=True, text=True)
    return out.stdout.split()


def module_entries(kernel_root: pathlib.Path, release: str) -> tuple[list[cpio.Entry], str]:
    """Return cpio entries for the modules /init loads, and the text of its load list.

    Raises BuildError when a required module is missing.
    """
    mod_dir = kernel_root / "lib" / "modules" / release
    deps = parse_modules_dep((mod_dir / "modules.dep").read_text())
    builtin_file = mod_dir / "modules.builtin"
    builtin = parse_modules_builtin(builtin_file.read_text()) if builtin_file.exists() else set()
    try:
        order = load_order(deps, REQUIRED_MODULES, OPTIONAL_MODULES, builtin)
    except Exception as e:
        raise BuildError(str(e)) from e
    files = [f"lib/modules/{release}/{rel}" for rel in order]
    entries = [cpio.directory(d) for d in parent_dirs(files) if d not in ("lib", "lib/modules")]
    entries += [cpio.regular(f, (kernel_root / f).read_bytes()) for f in files]
    listing = "".join(f"{release}/{rel}\n" for rel in order)
    return entries, listing


def initramfs_entries(
    busybox: pathlib.Path, kernel_root: pathlib.Path, release: str
) -> list[cpio.Entry]:
    """Return every entry of the initramfs, parents before children."""
    entries = [cpio.directory(d) for d in DIRECTORIES]
    entries += [cpio.symlink(p, t) for p, t in SYMLINKS.items()]
    entries.append(cpio.char_device("dev/console", 5, 1))
    entries.append(cpio.regular("bin/busybox", busybox.read_bytes(), 0o755))
    entries += [cpio.symlink(p, t) for p, t in applet_links(busybox_applets(busybox)).items()]
    mod_entries, listing = module_entries(kernel_root, release)
    entries += mod_entries
    entries.append(cpio.regular("etc/testguest/modules", listing.encode()))
    entries.append(cpio.regular("etc/hostname", b"vauban-testguest\n"))
    entries.append(cpio.regular("init", INIT_SCRIPT.read_bytes(), 0o755))
    return entries


def write_initramfs(dest: pathlib.Path, entries: list[cpio.Entry]) -> None:
    """Write `entries` to `dest` as a gzip-compressed newc archive (reproducible bytes)."""
    raw = io.BytesIO()
    cpio.write_newc(entries, raw)
    with dest.open("wb") as f, gzip.GzipFile(
        filename="", fileobj=f, mode="wb", mtime=0, compresslevel=9
    ) as gz:
        gz.write(raw.getvalue())


# ---------------------------------------------------------------- orchestration


@contextlib.contextmanager
def cache_lock(cache: pathlib.Path) -> Iterator[None]:
    """Hold an exclusive lock on `cache` (one build at a time per cache directory)."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def remove_stale_temporaries(cache: pathlib.Path, out: pathlib.Path) -> None:
    """Remove temporaries a killed build left behind (call with the cache lock held)."""
    stale = [
        *cache.glob(".work-*"),
        *(cache / "debs").glob(".download-*"),
        *(cache / "pkgs").glob(".*"),
        *out.parent.glob(f".{out.name}.*.tmp"),
    ]
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def stamp_path(out: pathlib.Path) -> pathlib.Path:
    """Where the stamp of the image at `out` is kept."""
    return out.with_name(out.name + ".stamp")


def up_to_date(out: pathlib.Path, stamp: dict[str, object]) -> bool:
    """True when `out` exists and its stamp equals `stamp`."""
    try:
        return out.is_file() and json.loads(stamp_path(out).read_text()) == stamp
    except (OSError, ValueError):
        return False


def unpack(cache: pathlib.Path, pkgs: debs.GuestPackages,
           deb_files: dict[str, pathlib.Path]) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """Return the unpacked trees of the kernel, busybox and syslinux-common packages."""
    release = pkgs.kernel_release

    def finish_kernel(root: pathlib.Path) -> None:
        if not (root / "lib" / "modules" / release / "modules.dep").exists():
            debs.depmod(root, release)

    kernel = debs.extract(cache, pkgs.kernel, deb_files[pkgs.kernel.name], finish_kernel)
    busybox = debs.extract(cache, pkgs.busybox, deb_files[pkgs.busybox.name])
    syslinux = debs.extract(cache, pkgs.syslinux, deb_files[pkgs.syslinux.name])
    return kernel, busybox, syslinux


def build_image(work: pathlib.Path, dest: pathlib.Path, pkgs: debs.GuestPackages,
                trees: tuple[pathlib.Path, pathlib.Path, pathlib.Path]) -> None:
    """Write the complete disk image to `dest`, using `work` for intermediate files."""
    kernel_root, busybox_root, syslinux_root = trees
    release = pkgs.kernel_release
    vmlinuz = kernel_root / "boot" / f"vmlinuz-{release}"
    initrd = work / disk.INITRD_NAME
    write_initramfs(initrd, initramfs_entries(busybox_root / "bin" / "busybox",
                                              kernel_root, release))
    size_mib = disk.disk_size_mib(vmlinuz.stat().st_size + initrd.stat().st_size)
    fat = work / "fat.img"
    disk.make_fat_partition(fat, size_mib - 1,
                            {disk.KERNEL_NAME: vmlinuz, disk.INITRD_NAME: initrd},
                            disk.syslinux_cfg())
    mbr = (syslinux_root / "usr" / "lib" / "syslinux" / "mbr" / "mbr.bin").read_bytes()
    disk.assemble_disk(dest, mbr, fat, size_mib)


def publish(tmp: pathlib.Path, out: pathlib.Path, stamp: dict[str, object]) -> None:
    """Atomically replace `out` with `tmp`, then write its stamp.

    The old stamp goes first, so a crash in between leaves an image without a
    stamp (rebuilt next time), never a stamp describing another image.
    """
    stamp_path(out).unlink(missing_ok=True)
    tmp.chmod(0o644)
    tmp.replace(out)
    st_tmp = stamp_path(out).with_name(stamp_path(out).name + ".tmp")
    st_tmp.write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
    st_tmp.replace(stamp_path(out))


def build(out: pathlib.Path = DEFAULT_OUT, cache: pathlib.Path = DEFAULT_CACHE,
          force: bool = False) -> BuildResult:
    """Make sure `out` is the test guest image built from the current inputs.

    After success `out` is a complete bootable raw disk image and `<out>.stamp`
    describes its inputs; nothing was rebuilt if they were already current
    (unless `force`). After failure (BuildError, debs.PackageError, OSError,
    subprocess.CalledProcessError) `out` and its stamp are as before and no
    temporary file is left next to `out` (the cache may hold new downloads).
    """
    started = time.monotonic()
    out, cache = out.absolute(), cache.absolute()
    check_host_tools()
    with cache_lock(cache):
        remove_stale_temporaries(cache, out)
        pkgs, deb_files = debs.resolve_and_fetch(cache)
        stamp = stamp_data(pkgs, sources_digest(), host_syslinux_version())
        if not force and up_to_date(out, stamp):
            return BuildResult(out, False, time.monotonic() - started)
        trees = unpack(cache, pkgs, deb_files)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".work-", dir=cache) as work_dir:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
            os.close(fd)
            tmp = pathlib.Path(tmp_name)
            try:
                build_image(pathlib.Path(work_dir), tmp, pkgs, trees)
                publish(tmp, out, stamp)
            finally:
                tmp.unlink(missing_ok=True)
    return BuildResult(out, True, time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 success, 1 failure)."""
    parser = argparse.ArgumentParser(prog="python -m images.testguest.build",
                                     description="Build the Vauban test guest disk image.")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT,
                        help=f"image to write (default: {DEFAULT_OUT})")
    parser.add_argument("--cache", type=pathlib.Path, default=DEFAULT_CACHE,
                        help=f"download/unpack cache (default: {DEFAULT_CACHE})")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    try:
        result = build(args.out, args.cache, args.force)
    except (BuildError, debs.PackageError, OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", None)
        print(f"testguest build failed: {e}" + (f"\n{detail}" if detail else ""),
              file=sys.stderr)
        return 1
    state = "built" if result.built else "up to date"
    print(f"{result.image}: {state} ({result.seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
