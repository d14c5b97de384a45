"""Unit tests for the pure pieces of the test guest builder (no apt, no QEMU)."""

from __future__ import annotations

import gzip
import io
import pathlib
import stat
import struct
import subprocess

import pytest

from images.testguest import build, cpio, debs, disk
from images.testguest.modules import (
    ModuleError,
    load_order,
    module_name,
    parse_modules_builtin,
    parse_modules_dep,
)

MODULES_DEP = """\
kernel/fs/isofs/isofs.ko: kernel/drivers/cdrom/cdrom.ko
kernel/drivers/cdrom/cdrom.ko:
kernel/drivers/acpi/button.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko \
kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/input/evdev.ko:
kernel/drivers/scsi/sr_mod.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/cdrom/cdrom.ko
kernel/drivers/scsi/scsi_mod.ko:
"""

PKGS = debs.GuestPackages(
    kernel=debs.PackageRef("linux-image-6.1.0-56-cloud-amd64", "6.1.192-2"),
    busybox=debs.PackageRef("busybox-static", "1:1.35.0-4+deb12u1+b1"),
    syslinux=debs.PackageRef("syslinux-common", "3:6.04~git20190206.bf6db5b4+dfsg1-3"),
)


# ---------------------------------------------------------------- modules


def test_module_name_normalises() -> None:
    assert module_name("kernel/fs/isofs/isofs.ko") == "isofs"
    assert module_name("kernel/drivers/hid/hid-generic.ko.xz") == "hid_generic"


def test_parse_modules_dep() -> None:
    deps = parse_modules_dep("# comment\n\na.ko: b.ko c.ko\nb.ko:\n")
    assert deps == {"a.ko": ["b.ko", "c.ko"], "b.ko": []}
    with pytest.raises(ValueError):
        parse_modules_dep("no colon here\n")


def test_load_order_puts_dependencies_first_once() -> None:
    deps = parse_modules_dep(MODULES_DEP)
    order = load_order(deps, ["virtio_pci", "virtio_blk", "isofs", "button", "evdev"])
    names = [module_name(p) for p in order]
    assert len(names) == len(set(names))
    assert set(names) == {
        "virtio_pci", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio",
        "virtio_ring", "virtio_blk", "isofs", "cdrom", "button", "evdev",
    }
    for path in order:
        for dep in deps[path]:
            assert order.index(dep) < order.index(path), (dep, path)
    assert names.index("virtio") < names.index("virtio_ring")


def test_load_order_skips_builtin_and_missing_optional() -> None:
    deps = parse_modules_dep(MODULES_DEP)
    order = load_order(deps, ["isofs", "evdev"], optional=["ahci", "sr_mod"], builtin={"evdev"})
    assert [module_name(p) for p in order] == ["cdrom", "isofs", "scsi_mod", "sr_mod"]


def test_load_order_rejects_missing_required_and_loops() -> None:
    deps = parse_modules_dep(MODULES_DEP)
    with pytest.raises(ModuleError, match="ahci"):
        load_order(deps, ["ahci"])
    with pytest.raises(ModuleError, match="loop"):
        load_order({"a.ko": ["b.ko"], "b.ko": ["a.ko"]}, ["a"])


def test_parse_modules_builtin() -> None:
    assert parse_modules_builtin("kernel/drivers/input/evdev.ko\n\n") == {"evdev"}


# ---------------------------------------------------------------- apt parsing


POLICY = """\
linux-image-cloud-amd64:
  Installed: (none)
  Candidate: 6.1.192-2
  Version table:
     6.1.192-2 500
busybox-static:
  Installed: (none)
  Candidate: 1:1.35.0-4+deb12u1+b1
syslinux-common:
  Installed: 3:6.04
  Candidate: (none)
"""


def test_parse_candidates() -> None:
    assert debs.parse_candidates(POLICY) == {
        "linux-image-cloud-amd64": "6.1.192-2",
        "busybox-static": "1:1.35.0-4+deb12u1+b1",
        "syslinux-common": None,
    }
    assert debs.parse_candidates("") == {}


def test_control_field_and_kernel_from_depends() -> None:
    show = (
        "Package: linux-image-cloud-amd64\nVersion: 6.1.192-2\n"
        "Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\nSection: kernel\n\n"
        "Package: linux-image-cloud-amd64\nVersion: 6.1.176-1\n"
        "Depends: linux-image-6.1.0-50-cloud-amd64 (= 6.1.176-1)\n"
    )
    depends = debs.control_field(show, "Depends")
    assert depends == "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)"
    ref = debs.kernel_from_depends("foo, " + depends)
    assert ref == debs.PackageRef("linux-image-6.1.0-56-cloud-amd64", "6.1.192-2")
    with pytest.raises(debs.PackageError):
        debs.kernel_from_depends("linux-base, initramfs-tools")


def test_control_field_joins_continuation_lines() -> None:
    assert debs.control_field("Depends: a,\n b\nX: y\n", "depends") == "a, b"
    assert debs.control_field("X: y\n", "Depends") is None


def test_package_names() -> None:
    assert PKGS.kernel_release == "6.1.0-56-cloud-amd64"
    assert PKGS.busybox.slug == "busybox-static_1%3a1.35.0-4+deb12u1+b1"


# ---------------------------------------------------------------- boot pieces


def test_syslinux_cfg_boots_at_once_on_serial() -> None:
    cfg = disk.syslinux_cfg()
    lines = [line.strip() for line in cfg.splitlines()]
    assert "SERIAL 0 115200" in lines
    assert "PROMPT 0" in lines and "TIMEOUT 0" in lines
    assert "LINUX /vmlinuz" in lines and "INITRD /initrd.gz" in lines
    append = next(line for line in lines if line.startswith("APPEND "))
    assert "console=ttyS0" in append.split()[1]


def test_lba_to_chs() -> None:
    assert disk.lba_to_chs(0) == bytes((0, 1, 0))
    assert disk.lba_to_chs(2048) == bytes((32, 33, 0))  # C0 H32 S33
    assert disk.lba_to_chs(10**9) == bytes((254, 0xFF, 0xFF))


def test_build_mbr_layout() -> None:
    part = disk.Partition(2048, 61440, disk.PARTITION_TYPE_FAT16_LBA, True)
    mbr = disk.build_mbr(b"\xfa" * 440, [part])
    assert len(mbr) == 512
    assert mbr[:440] == b"\xfa" * 440
    assert mbr[510:] == b"\x55\xaa"
    entry = mbr[446:462]
    assert entry[0] == 0x80 and entry[4] == 0x0E
    assert struct.unpack("<II", entry[8:16]) == (2048, 61440)
    assert mbr[462:510] == b"\0" * 48
    with pytest.raises(ValueError):
        disk.build_mbr(b"x" * 441, [part])


def test_disk_size() -> None:
    assert disk.disk_size_mib(10 * disk.MIB) == disk.MIN_DISK_MIB
    assert disk.disk_size_mib(100 * disk.MIB) >= 1 + 125 + 2


def test_assemble_disk(tmp_path: pathlib.Path) -> None:
    fat = tmp_path / "fat.img"
    fat.write_bytes(b"F" * (3 * disk.MIB))
    dest = tmp_path / "disk.raw"
    disk.assemble_disk(dest, b"\xeb" * 440, fat, 4)
    data = dest.read_bytes()
    assert len(data) == 4 * disk.MIB
    assert data[:440] == b"\xeb" * 440
    assert data[disk.MIB : 4 * disk.MIB] == b"F" * (3 * disk.MIB)
    with pytest.raises(ValueError):
        disk.assemble_disk(dest, b"", fat, 3)


# ---------------------------------------------------------------- initramfs


def test_cpio_encoding_is_aligned_and_exact() -> None:
    raw = cpio.encode_entry(cpio.regular("init", b"#!/bin/sh\n", 0o755), 7)
    assert raw.startswith(b"070701")
    assert len(raw) % 4 == 0
    fields = [int(raw[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
    ino, mode, uid, gid, nlink, mtime, size, *_, namesize, check = fields
    assert (ino, mode, uid, gid, nlink, mtime, size) == (7, stat.S_IFREG | 0o755, 0, 0, 1, 0, 10)
    assert namesize == len("init") + 1 and check == 0
    dev = cpio.encode_entry(cpio.char_device("dev/console", 5, 1), 1)
    assert int(dev[6 + 8 * 9 : 6 + 8 * 10], 16) == 5  # rdevmajor
    assert int(dev[6 + 8 * 10 : 6 + 8 * 11], 16) == 1  # rdevminor
    with pytest.raises(ValueError):
        cpio.encode_entry(cpio.regular("/abs", b""), 1)


def test_cpio_archive_reads_back_with_gnu_cpio(tmp_path: pathlib.Path) -> None:
    entries = [
        cpio.directory("bin"),
        cpio.regular("bin/busybox", b"\x7fELF" + b"x" * 1001, 0o755),
        cpio.symlink("bin/sh", "busybox"),
        cpio.char_device("dev/console", 5, 1),
    ]
    buf = io.BytesIO()
    cpio.write_newc(entries, buf)
    listing = subprocess.run(["cpio", "-it", "--quiet"], input=buf.getvalue(),
                             capture_output=True, check=True).stdout.decode().split()
    assert listing == ["bin", "bin/busybox", "bin/sh", "dev/console"]
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-id", "--quiet", "bin/busybox"], input=buf.getvalue(),
                   cwd=out, check=True)
    assert (out / "bin" / "busybox").read_bytes() == entries[1].data


def test_write_initramfs_is_reproducible(tmp_path: pathlib.Path) -> None:
    entries = [cpio.directory("etc"), cpio.regular("etc/x", b"y")]
    a, b = tmp_path / "a.gz", tmp_path / "b.gz"
    build.write_initramfs(a, entries)
    build.write_initramfs(b, entries)
    assert a.read_bytes() == b.read_bytes()
    assert gzip.decompress(a.read_bytes()).endswith(b"TRAILER!!!\0\0\0\0")


def test_applet_links_and_parent_dirs() -> None:
    links = build.applet_links(["sh", "busybox", "mount", "sh"])
    assert links == {"bin/mount": "busybox", "bin/sh": "busybox"}
    assert build.parent_dirs(["lib/modules/r/kernel/fs/isofs/isofs.ko", "lib/x"]) == [
        "lib", "lib/modules", "lib/modules/r", "lib/modules/r/kernel",
        "lib/modules/r/kernel/fs", "lib/modules/r/kernel/fs/isofs",
    ]


def test_init_script_prints_the_protocol_lines() -> None:
    text = build.INIT_SCRIPT.read_text()
    assert text.startswith("#!/bin/sh\n")
    for marker in ("VAUBAN-TESTGUEST-BOOTED", "VAUBAN-TESTGUEST-READY",
                   "vauban-testguest hostname=", "vauban-testguest instance-id=",
                   "vauban-testguest network-config=present", "vauban-testguest powering off",
                   "findfs LABEL=cidata", "poweroff -f"):
        assert marker in text


# ---------------------------------------------------------------- caching and atomicity


@pytest.fixture
def fake_build(monkeypatch: pytest.MonkeyPatch) -> list[pathlib.Path]:
    """Replace apt, unpacking and image making with fakes; returns the list of images made."""
    made: list[pathlib.Path] = []

    def fake_image(work: pathlib.Path, dest: pathlib.Path, pkgs: debs.GuestPackages,
                   trees: object) -> None:
        dest.write_bytes(b"image %d" % len(made))
        made.append(dest)

    monkeypatch.setattr(build, "check_host_tools", lambda: None)
    monkeypatch.setattr(build, "host_syslinux_version", lambda: "syslinux test")
    monkeypatch.setattr(build.debs, "resolve_and_fetch", lambda cache: (PKGS, {}))
    monkeypatch.setattr(build, "unpack", lambda cache, pkgs, debs_: None)
    monkeypatch.setattr(build, "build_image", fake_image)
    return made


def test_build_skips_when_up_to_date(tmp_path: pathlib.Path, fake_build: list[pathlib.Path],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "img" / "tg.raw"
    first = build.build(out, tmp_path / "cache")
    assert first.built and out.read_bytes() == b"image 0"
    assert not build.build(out, tmp_path / "cache").built
    assert build.build(out, tmp_path / "cache", force=True).built
    assert out.read_bytes() == b"image 1"
    newer = debs.GuestPackages(PKGS.kernel, debs.PackageRef("busybox-static", "2"), PKGS.syslinux)
    monkeypatch.setattr(build.debs, "resolve_and_fetch", lambda cache: (newer, {}))
    assert build.build(out, tmp_path / "cache").built
    assert sorted(p.name for p in out.parent.iterdir()) == ["tg.raw", "tg.raw.stamp"]


def test_failed_build_keeps_previous_image(tmp_path: pathlib.Path,
                                           fake_build: list[pathlib.Path],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "tg.raw"
    build.build(out, tmp_path / "cache")
    stamp = build.stamp_path(out).read_text()

    def broken(work: pathlib.Path, dest: pathlib.Path, pkgs: object, trees: object) -> None:
        dest.write_bytes(b"half")
        raise subprocess.CalledProcessError(1, ["mkfs.fat"])

    monkeypatch.setattr(build, "build_image", broken)
    with pytest.raises(subprocess.CalledProcessError):
        build.build(out, tmp_path / "cache", force=True)
    assert out.read_bytes() == b"image 0"
    assert build.stamp_path(out).read_text() == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "tg.raw", "tg.raw.stamp"]
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".work-")]


def test_stale_temporaries_are_removed(tmp_path: pathlib.Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "img" / "tg.raw"
    for d in (cache / ".work-abc", cache / "debs" / ".download-x", cache / "pkgs" / ".p.1",
              cache / "pkgs" / "busybox-static_1", out.parent):
        d.mkdir(parents=True)
    (out.parent / ".tg.raw.123.tmp").write_bytes(b"")
    out.write_bytes(b"keep")
    build.remove_stale_temporaries(cache, out)
    assert sorted(p.name for p in (cache / "pkgs").iterdir()) == ["busybox-static_1"]
    assert not (cache / ".work-abc").exists() and not (cache / "debs" / ".download-x").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["tg.raw"]
