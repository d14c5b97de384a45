"""The installer's writing steps with the real tools (sfdisk, mkfs, unsquashfs,
grub-install) on a sparse file attached as a loop device, and its refusals, which
must leave that file byte for byte as it was."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.answers import gather
from appliance.cmd import Console
from appliance.disks import Candidate
from appliance.install import Env, install
from appliance.network import Link

pytestmark = pytest.mark.integration

CA = "ab" * 32
MAC = "52:54:00:12:34:56"
KERNEL = "6.1.0-99-amd64"
DISK_BYTES = 1024**3


def sh(*argv: str) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"{argv}: {out.stderr}"
    return out.stdout


@pytest.fixture
def loop_disk(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(loop device, its backing file): a blank 1 GiB sparse file, partitions scanned."""
    backing = tmp_path / "disk.img"
    with backing.open("wb") as f:
        f.truncate(DISK_BYTES)
    device = Path(sh("losetup", "--find", "--show", "--partscan", str(backing)).strip())
    try:
        yield device, backing
    finally:
        subprocess.run(["umount", "--recursive", str(tmp_path / "target")],
                       capture_output=True, check=False)
        sh("losetup", "--detach", str(device))


@pytest.fixture
def live_dir(tmp_path: Path) -> Path:
    """A medium's live/ folder with two squashfs layers, the second overriding a file."""
    live = tmp_path / "live"
    live.mkdir()
    base = tmp_path / "tree-base"
    (base / "boot").mkdir(parents=True)
    (base / f"boot/vmlinuz-{KERNEL}").write_bytes(b"kernel")
    (base / f"boot/initrd.img-{KERNEL}").write_bytes(b"initrd")
    (base / "etc/vauban").mkdir(parents=True)
    (base / "etc/vauban/release.json").write_text('{"version": "base"}')
    (base / "etc/machine-id").write_text("")
    top = tmp_path / "tree-top"
    (top / "etc/vauban").mkdir(parents=True)
    (top / "etc/vauban/agent.toml").write_text('data_dir = "/var/lib/vauban/agent"\n')
    (top / "etc/vauban/release.json").write_text('{"version": "top"}')
    for tree, name in ((base, "00-base.squashfs"), (top, "10-vauban.squashfs")):
        sh("mksquashfs", str(tree), str(live / name), "-noappend", "-quiet", "-comp", "gzip")
    (live / "filesystem.module").write_text("00-base.squashfs\n10-vauban.squashfs\n")
    return live


def answers_file(tmp_path: Path, **extra: str) -> Path:
    lines = {"controller": '"https://10.0.2.2:8443"', "join_token": '"tok-1234567890"',
             "ca_sha256": f'"{CA}"', "hostname": '"node-7"', "timezone": '"UTC"',
             "hardware_profile": '"lab"', **extra}
    path = tmp_path / "vauban-answers.toml"
    path.write_text("".join(f"{k} = {v}\n" for k, v in lines.items()) +
                    '[network]\nmode = "static"\naddress = "10.0.0.21/24"\n'
                    'gateway = "10.0.0.1"\nvlan = 42\n')
    return path


def env_for(device: Path, live: Path, tmp_path: Path, out: io.StringIO,
            reboots: list[int]) -> Env:
    candidate = Candidate(name=device.name, path=device, size_bytes=DISK_BYTES,
                          removable=False, model="loop", serial=None)
    return Env(console=Console(out, serial=None), live_dir=live,
               mountpoint=tmp_path / "target", candidates=lambda: [candidate],
               links=lambda: [Link("eth0", MAC, physical=True, carrier=True)],
               qualify=lambda _profile: (True, ""), ask=_no_questions,
               reboot=lambda: reboots.append(1))


def _no_questions(_given: object) -> object:
    raise AssertionError("the installer asked questions although answers were given")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def test_install_on_a_loop_device(loop_disk: tuple[Path, Path], live_dir: Path,
                                  tmp_path: Path) -> None:
    device, _backing = loop_disk
    path = answers_file(tmp_path, disk=f'"{device}"')
    out, reboots = io.StringIO(), []
    rc = install(f"boot=live vauban.install=auto vauban.answers={path}",
                 env_for(device, live_dir, tmp_path, out, reboots))
    assert rc == 0, out.getvalue()
    assert "VAUBAN-INSTALL: done, rebooting" in out.getvalue()
    assert reboots == [1]

    table = json.loads(sh("sfdisk", "--json", str(device)))["partitiontable"]
    assert table["label"] == "gpt"
    types = [p["type"] for p in table["partitions"]]
    assert types == ["21686148-6449-6E6F-744E-656564454649",
                     "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                     "0FC63DAF-8483-4772-8E79-3D69D8477DE4"]
    sizes = [p["size"] * table.get("sectorsize", 512) for p in table["partitions"]]
    assert sizes[:2] == [1024**2, 512 * 1024**2]
    with Path(f"{device}p1").open("rb") as f:
        assert f.read(1024**2).strip(b"\0"), "the BIOS boot partition holds no GRUB core"

    root_uuid = sh("blkid", "-p", "-s", "UUID", "-o", "value", f"{device}p3").strip()
    esp_uuid = sh("blkid", "-p", "-s", "UUID", "-o", "value", f"{device}p2").strip()
    check = tmp_path / "check"
    check.mkdir()
    sh("mount", "-o", "ro", f"{device}p3", str(check))
    try:
        listing = sh("mdir", "-b", "-i", f"{device}p2", "::/EFI/BOOT")
        assert "BOOTX64.EFI" in listing.upper()
        loader = tmp_path / "BOOTX64.EFI"
        sh("mcopy", "-i", f"{device}p2", "::/EFI/BOOT/BOOTX64.EFI", str(loader))
        assert loader.read_bytes()[:2] == b"MZ"
        assert (check / "boot/grub/x86_64-efi/normal.mod").is_file()
        fstab = (check / "etc/fstab").read_text()
        assert f"UUID={root_uuid} / ext4" in fstab and f"UUID={esp_uuid} /boot/efi" in fstab
        grub = (check / "boot/grub/grub.cfg").read_text()
        assert f"linux /boot/vmlinuz-{KERNEL} root=UUID={root_uuid}" in grub
        assert "console=ttyS0,115200" in grub
        assert (check / "boot/grub/i386-pc/normal.mod").is_file()
        assert json.loads((check / "etc/vauban/release.json").read_text()) == {"version": "top"}
        assert (check / "etc/hostname").read_text() == "node-7\n"
        assert 'hardware_profile = "lab"' in (check / "etc/vauban/agent.toml").read_text()
        firstboot = check / "etc/vauban/firstboot.toml"
        assert firstboot.stat().st_mode & 0o777 == 0o600
        assert "tok-1234567890" in firstboot.read_text()
        netdev = (check / "etc/systemd/network/10-vauban-mgmt-vlan.netdev").read_text()
        assert "Id=42" in netdev
        assert os.readlink(check / "etc/localtime") == "/usr/share/zoneinfo/UTC"
    finally:
        sh("umount", str(check))
    for firmware in ("bios", "uefi"):
        shown = grub_menu_shown(_backing, firmware, tmp_path)
        assert "Vauban node" in shown, f"{firmware}: GRUB's menu not shown: {shown[-2000:]}"


def grub_menu_shown(disk: Path, firmware: str, tmp_path: Path) -> str:
    """Boot `disk` (read-only) under QEMU with `firmware` ("bios" or "uefi") until GRUB
    shows the installed system's menu on the serial port; what the port printed."""
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-machine", "pc", "-m", "256",
            "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
            "-drive", f"file={disk},format=raw,if=virtio,snapshot=on"]
    if firmware == "uefi":
        varstore = tmp_path / "OVMF_VARS.fd"
        varstore.write_bytes(Path("/usr/share/OVMF/OVMF_VARS_4M.fd").read_bytes())
        argv += ["-drive", "if=pflash,format=raw,readonly=on,"
                 "file=/usr/share/OVMF/OVMF_CODE_4M.fd",
                 "-drive", f"if=pflash,format=raw,file={varstore}"]
    seen = b""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL) as qemu:
        assert qemu.stdout is not None
        try:
            while b"Vauban node" not in seen:
                chunk = qemu.stdout.read1(4096)
                if not chunk:
                    break
                seen += chunk
        finally:
            qemu.kill()
    return seen.decode(errors="replace")


def test_bad_answers_leave_the_disk_untouched(loop_disk: tuple[Path, Path], live_dir: Path,
                                              tmp_path: Path) -> None:
    device, backing = loop_disk
    sh("dd", "if=/dev/urandom", f"of={device}", "bs=1M", "count=1", "conv=fsync")
    before = sha256(backing)
    path = answers_file(tmp_path, disk=f'"{device}"', ca_sha256='"not-hex"')
    out, reboots = io.StringIO(), []
    rc = install(f"vauban.install=auto vauban.answers={path} vauban.hostname=other",
                 env_for(device, live_dir, tmp_path, out, reboots))
    assert rc == 2
    said = out.getvalue()
    assert "VAUBAN-INSTALL: refused: 2 problem(s) with the answers" in said
    assert "ca_sha256" in said and "hostname: contradiction" in said
    assert sha256(backing) == before and reboots == []


def test_a_disk_with_data_is_refused_without_wipe(loop_disk: tuple[Path, Path],
                                                  live_dir: Path, tmp_path: Path) -> None:
    device, backing = loop_disk
    sh("mkfs.ext4", "-q", "-F", str(device))
    before = sha256(backing)
    path = answers_file(tmp_path, disk=f'"{device}"')
    out, reboots = io.StringIO(), []
    rc = install(f"vauban.install=auto vauban.answers={path}",
                 env_for(device, live_dir, tmp_path, out, reboots))
    assert rc == 2
    assert "holds a ext4 signature" in out.getvalue()
    assert "wipe = true" in out.getvalue()
    assert sha256(backing) == before and reboots == []


def test_answers_from_a_medium_labelled_vauban(tmp_path: Path) -> None:
    """The answer file is found by its filesystem's label, read from a read-only mount,
    and the mount is gone afterwards (ext4 here: this machine's kernel lacks vfat)."""
    tree = tmp_path / "medium"
    tree.mkdir()
    answers_file(tree, hardware_profile='"lab"')
    image = tmp_path / "answers.img"
    with image.open("wb") as f:
        f.truncate(8 * 1024**2)
    sh("mkfs.ext4", "-q", "-L", "VAUBAN", "-d", str(tree), str(image))
    device = sh("losetup", "--find", "--show", str(image)).strip()
    try:
        mounts_before = Path("/proc/mounts").read_text()
        mode, answers = gather("boot=live vauban.install=auto vauban.timezone=UTC")
        assert Path("/proc/mounts").read_text() == mounts_before
    finally:
        sh("losetup", "--detach", device)
    assert mode == "auto" and answers is not None
    assert answers.hostname == "node-7" and answers.network.vlan == 42
