"""The unattended installer: `python -m appliance.install`, run by
vauban-installer.service on the live system when the kernel command line holds
`vauban.install=auto` (or `=interactive`).

Every check comes before any disk is written: the answers, the hardware
qualification (the answers' profile), the tools the steps run, the target disk, the
management NIC. A
refusal prints `VAUBAN-INSTALL: refused: <reason>` and leaves every disk as it was.
Then, in order: partition (GPT: BIOS boot, EFI system, root), make the filesystems,
unpack the live system's layers, write the node's configuration, install GRUB for
BIOS and UEFI, unmount, print `VAUBAN-INSTALL: done, rebooting`, reboot. A step that
fails prints `VAUBAN-INSTALL: failed at <step>: <why>` and the console stays as it
is (no reboot). Each step is a function of paths and devices, so tests run it on a
loop device and a temporary folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from appliance import disks, network, target
from appliance.answers import Answers, AnswersError, gather
from appliance.cmd import SERIAL, CommandError, Console, Runner, run
from appliance.disks import Candidate, DiskError
from appliance.network import Link, NetworkError
from appliance.terminals import Terminals

MARK = "VAUBAN-INSTALL: "
LIVE_DIR = Path("/run/live/medium/live")
MOUNTPOINT = Path("/run/vauban-target")
ASK_ON = (Path("/dev/tty1"), SERIAL)  # the unit's screen (its TTYPath), the serial port
BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
SFDISK_SCRIPT = (f"label: gpt\n"
                 f"size=1MiB, type={BIOS_BOOT}, name=\"bios-boot\"\n"
                 f"size=512MiB, type={ESP}, name=\"efi\"\n"
                 f"type={LINUX}, name=\"vauban-root\"\n")
KERNEL_ARGS = "ro console=tty0 console=ttyS0,115200"
GRUB_LIB = Path("/usr/lib/grub")
# in the UEFI core image: enough to find the root and read the menu; the rest loads
# from /boot/grub/x86_64-efi on demand
SECTOR = 512
BIOS_CORE_MODULES = ["biosdisk", "part_gpt", "ext2", "search", "search_fs_uuid", "normal",
                     "configfile", "echo", "test"]
EFI_CORE_MODULES = ["part_gpt", "part_msdos", "ext2", "fat", "search", "search_fs_uuid",
                    "normal", "configfile", "echo", "test"]


# what the writing steps run, and the Debian package each comes from: checked before
# any disk is touched, so a live system that lacks one refuses instead of failing midway
TOOLS = {"wipefs": "util-linux", "blkid": "util-linux", "partx": "util-linux",
         "sfdisk": "fdisk", "mkfs.vfat": "dosfstools", "mkfs.ext4": "e2fsprogs",
         "unsquashfs": "squashfs-tools", "grub-mkimage": "grub-common", "mmd": "mtools",
         "mcopy": "mtools", "mount": "mount", "umount": "mount"}
GRUB_PLATFORMS = {"i386-pc": "grub-pc-bin", "x86_64-efi": "grub-efi-amd64-bin"}


def missing_tools(grub_lib: Path = GRUB_LIB) -> list[str]:
    """'tool (package)' for each program or GRUB platform the install needs and lacks."""
    missing = [f"{tool} ({pkg})" for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    missing += [f"GRUB for {platform} ({pkg})" for platform, pkg in GRUB_PLATFORMS.items()
                if not (grub_lib / platform / "boot.img" if platform == "i386-pc"
                        else grub_lib / platform / "normal.mod").is_file()]
    return missing


class InstallError(Exception):
    """A step failed; `step` names it. The disk may be partly written."""

    def __init__(self, step: str, why: str) -> None:
        self.step = step
        super().__init__(f"failed at {step}: {why}")


@dataclass(frozen=True)
class Partitions:
    bios: Path
    esp: Path
    root: Path


@contextlib.contextmanager
def step(name: str, say: Callable[[str], None]) -> Iterator[None]:
    """Announce step `name`; turn any failure inside into InstallError(name, why)."""
    say(f"{MARK}{name}")
    try:
        yield
    except InstallError:
        raise
    except (CommandError, OSError, ValueError) as e:
        raise InstallError(name, str(e)) from e


def partition_path(disk: Path, number: int) -> Path:
    """/dev/sda + 1 -> /dev/sda1; /dev/nvme0n1 or /dev/loop0 + 1 -> ...p1."""
    sep = "p" if disk.name[-1].isdigit() else ""
    return disk.with_name(f"{disk.name}{sep}{number}")


def partition(disk: Path, runner: Runner = run) -> Partitions:
    """Replace whatever `disk` holds with a GPT: 1 MiB BIOS boot partition (GRUB's core
    for BIOS), 512 MiB EFI system partition, the rest for the root. Afterwards the
    three partition devices exist."""
    runner(["wipefs", "--all", "--force", str(disk)])
    runner(["sfdisk", "--quiet", "--wipe", "always", "--wipe-partitions", "always", str(disk)],
           input_text=SFDISK_SCRIPT)
    parts = Partitions(*(partition_path(disk, n) for n in (1, 2, 3)))
    with contextlib.suppress(CommandError):
        runner(["udevadm", "settle"])
    if not all(p.exists() for p in (parts.bios, parts.esp, parts.root)):
        runner(["partx", "--update", str(disk)])
    missing = [str(p) for p in (parts.bios, parts.esp, parts.root) if not p.exists()]
    if missing:
        raise InstallError("partition", f"the kernel shows no {', '.join(missing)}")
    return parts


def make_filesystems(parts: Partitions, runner: Runner = run) -> tuple[str, str]:
    """FAT32 on the ESP, ext4 on the root; returns their UUIDs (root, esp)."""
    runner(["mkfs.vfat", "-F", "32", "-n", "EFI", str(parts.esp)])
    runner(["mkfs.ext4", "-F", "-q", "-L", "vauban-root", str(parts.root)])
    return uuid_of(parts.root, runner), uuid_of(parts.esp, runner)


def uuid_of(device: Path, runner: Runner = run) -> str:
    uuid = runner(["blkid", "-p", "-s", "UUID", "-o", "value", str(device)]).strip()
    if not uuid:
        raise InstallError("filesystems", f"{device} has no UUID after mkfs")
    return uuid


def mount_target(parts: Partitions, mountpoint: Path, runner: Runner = run) -> None:
    """The root at `mountpoint`, with the folder the ESP is mounted on once installed."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    runner(["mount", str(parts.root), str(mountpoint)])
    (mountpoint / "boot/efi").mkdir(parents=True, exist_ok=True)


def unmount_target(mountpoint: Path, runner: Runner = run) -> None:
    """Unmount what mount_target mounted (nothing when it is not mounted), then sync."""
    if os.path.ismount(mountpoint):
        runner(["umount", str(mountpoint)])
    runner(["sync"])


def layers(live_dir: Path) -> list[Path]:
    """The squashfs layers named in `live_dir`/filesystem.module, bottom to top."""
    listing = live_dir / "filesystem.module"
    names = [n.strip() for n in listing.read_text().splitlines()
             if n.strip() and not n.startswith("#")]
    if not names:
        raise ValueError(f"{listing} names no layer")
    paths = [live_dir / n for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"layers missing from the medium: {', '.join(missing)}")
    return paths


def unpack(layer_files: list[Path], mountpoint: Path, runner: Runner = run) -> None:
    """Each layer over the previous one into `mountpoint` (a later file replaces an earlier)."""
    for layer in layer_files:
        runner(["unsquashfs", "-f", "-q", "-n", "-d", str(mountpoint), str(layer)])


def _version_key(name: str) -> list[int | str]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def kernel_version(mountpoint: Path) -> str:
    """The newest kernel in `mountpoint`/boot that has its initrd beside it."""
    boot = mountpoint / "boot"
    versions = sorted((p.name[len("vmlinuz-"):] for p in boot.glob("vmlinuz-*")
                       if (boot / f"initrd.img-{p.name[len('vmlinuz-'):]}").is_file()),
                      key=_version_key)
    if not versions:
        raise ValueError(f"no kernel with its initrd in {boot} (the unpacked system lacks one)")
    return versions[-1]


def grub_cfg(root_uuid: str, version: str, title: str = "Vauban node") -> str:
    """GRUB's menu for the installed system: one entry, consoles on VGA and serial."""
    return (
        "# written by the Vauban installer\n"
        "serial --unit=0 --speed=115200\n"
        "terminal_input console serial\n"
        "terminal_output console serial\n"
        "set timeout=3\n"
        "set default=0\n"
        "insmod part_gpt\n"
        "insmod all_video\n"
        "insmod ext2\n"
        f"search --no-floppy --fs-uuid --set=root {root_uuid}\n"
        f"menuentry \"{title}\" {{\n"
        f"    linux /boot/vmlinuz-{version} root=UUID={root_uuid} {KERNEL_ARGS}\n"
        f"    initrd /boot/initrd.img-{version}\n"
        "}\n")


def _copy_modules(grub_lib: Path, platform: str, mountpoint: Path) -> None:
    """GRUB's modules for `platform` into the target's /boot/grub/<platform>."""
    modules = mountpoint / "boot/grub" / platform
    modules.mkdir(parents=True, exist_ok=True)
    for src in (grub_lib / platform).iterdir():
        if src.suffix in (".mod", ".lst", ".img"):
            shutil.copyfile(src, modules / src.name)


def _core_image(platform: str, root_uuid: str, modules: list[str], runner: Runner,
                tmp: Path) -> bytes:
    """A GRUB core image for `platform` that finds the root by UUID and reads
    /boot/grub/grub.cfg there."""
    early = tmp / "early.cfg"
    early.write_text(f"search.fs_uuid {root_uuid} root\nset prefix=($root)/boot/grub\n")
    image = tmp / f"core-{platform}.img"
    runner(["grub-mkimage", f"--format={platform}", f"--output={image}",
            f"--config={early}", "--prefix=/boot/grub", *modules])
    return image.read_bytes()


def bios_boot_start(disk: Path, runner: Runner = run) -> tuple[int, int]:
    """(first sector, sectors) of the BIOS boot partition of `disk`."""
    table = json.loads(runner(["sfdisk", "--json", str(disk)]))["partitiontable"]
    for part in table.get("partitions", []):
        if part["type"].upper() == BIOS_BOOT:
            return int(part["start"]), int(part["size"])
    raise ValueError(f"{disk} has no BIOS boot partition")


def install_grub_bios(disk: Path, mountpoint: Path, root_uuid: str, runner: Runner = run,
                      grub_lib: Path = GRUB_LIB) -> None:
    """GRUB for BIOS, as grub-install --target=i386-pc lays it out on a GPT disk: the
    core image in the BIOS boot partition, boot.img in the MBR (the protective MBR's
    partition entries kept) pointing at it, the modules in /boot/grub/i386-pc.

    Done here rather than by grub-install, which cannot map the partitions of every
    kind of disk (a loop device's among them) to a BIOS drive; the bytes are the same.
    ValueError when the core image does not fit the BIOS boot partition."""
    _copy_modules(grub_lib, "i386-pc", mountpoint)
    start, sectors = bios_boot_start(disk, runner)
    with tempfile.TemporaryDirectory(prefix="vauban-grub-") as tmp:
        core = bytearray(_core_image("i386-pc", root_uuid, BIOS_CORE_MODULES, runner,
                                     Path(tmp)))
    count = -(-len(core) // SECTOR)
    if count > sectors:
        raise ValueError(f"GRUB's core image ({count} sectors) does not fit the BIOS boot "
                         f"partition ({sectors})")
    core.extend(b"\0" * (count * SECTOR - len(core)))
    # diskboot.img (the core's first sector) ends with one block list entry:
    # start sector (u64), sector count (u16), load segment (u16, kept)
    struct.pack_into("<QH", core, SECTOR - 12, start + 1, count - 1)
    boot = bytearray((grub_lib / "i386-pc/boot.img").read_bytes())
    with disk.open("r+b") as dev:
        mbr = dev.read(SECTOR)
        boot[0x1B8:0x1FE] = mbr[0x1B8:0x1FE]  # disk signature and partition entries
        struct.pack_into("<Q", boot, 0x5C, start)  # where boot.img finds the core
        boot[0x66:0x68] = b"\x90\x90"  # a hard disk: trust the BIOS's drive number
        dev.seek(start * SECTOR)
        dev.write(core)
        dev.seek(0)
        dev.write(boot)
        dev.flush()
        os.fsync(dev.fileno())


def install_grub_efi(esp: Path, mountpoint: Path, root_uuid: str, runner: Runner = run,
                     grub_lib: Path = GRUB_LIB) -> None:
    """The removable-media UEFI loader EFI/BOOT/BOOTX64.EFI on the FAT filesystem of
    `esp` (written with mtools: the ESP is never mounted, so this kernel needs no vfat),
    GRUB's x86_64-efi modules in /boot/grub/x86_64-efi: what grub-install --removable
    --no-nvram sets up. No NVRAM entry is written; firmware boots the removable path."""
    _copy_modules(grub_lib, "x86_64-efi", mountpoint)
    with tempfile.TemporaryDirectory(prefix="vauban-grub-") as tmp:
        image = Path(tmp) / "BOOTX64.EFI"
        image.write_bytes(_core_image("x86_64-efi", root_uuid, EFI_CORE_MODULES, runner,
                                      Path(tmp)))
        runner(["mmd", "-D", "s", "-i", str(esp), "::/EFI", "::/EFI/BOOT"])
        runner(["mcopy", "-o", "-i", str(esp), str(image), "::/EFI/BOOT/BOOTX64.EFI"])


def install_grub(disk: Path, esp: Path, mountpoint: Path, root_uuid: str,
                 runner: Runner = run, title: str = "Vauban node") -> None:
    """GRUB from this (live) system onto the target, for BIOS and UEFI, then the menu
    in `mountpoint`/boot/grub/grub.cfg (written here: root by UUID, the installed
    kernel, consoles on VGA and serial)."""
    version = kernel_version(mountpoint)
    install_grub_bios(disk, mountpoint, root_uuid, runner)
    install_grub_efi(esp, mountpoint, root_uuid, runner)
    (mountpoint / "boot/grub/grub.cfg").write_text(grub_cfg(root_uuid, version, title))


def write_disk(disk: Path, answers: Answers, mac: str, live_dir: Path, mountpoint: Path,
               say: Callable[[str], None], runner: Runner = run) -> None:
    """Every writing step, in order, onto `disk`. InstallError naming the step on
    failure; the target is unmounted either way."""
    with step("reading the layers", say):
        layer_files = layers(live_dir)
    with step("partitioning", say):
        parts = partition(disk, runner)
    with step("making the filesystems", say):
        root_uuid, esp_uuid = make_filesystems(parts, runner)
    try:
        with step("mounting the target", say):
            mount_target(parts, mountpoint, runner)
        with step("copying the system", say):
            unpack(layer_files, mountpoint, runner)
        with step("writing the node's configuration", say):
            target.write_config(mountpoint, answers, mac, root_uuid, esp_uuid)
        with step("installing GRUB (BIOS and UEFI)", say):
            install_grub(disk, parts.esp, mountpoint, root_uuid, runner)
    finally:
        with step("unmounting", say):
            unmount_target(mountpoint, runner)


def qualification(profile: str) -> tuple[bool, str]:
    """(fit, report text) of this server against the hardware `profile`."""
    from hardware.cli import print_report
    from hardware.discover import discover
    from hardware.qualify import load_profile, qualify

    inventory = discover()
    report = qualify(inventory, load_profile(profile))
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        print_report(inventory, report)
    return report.verdict != "FAIL", text.getvalue()


def refuse(console: Console, reason: str, details: list[str] | None = None) -> int:
    console.say(f"{MARK}refused: {reason}")
    for line in details or []:
        console.say(f"  - {line}")
    console.say("Nothing was written to any disk. Fix the answers and boot the installer "
                "again (see docs/install.md).")
    return 2


def _default_candidates() -> list[Candidate]:
    label_device = None
    with contextlib.suppress(CommandError):
        label_device = run(["blkid", "-L", "VAUBAN"]).strip() or None
    return disks.list_candidates(exclude=disks.media_disks(Path("/"), label_device))


def _ask(given: Answers | None) -> Answers:
    """The questions on the screen and the serial port at once (EOFError: neither opens)."""
    from appliance.interactive import ask

    terminals = Terminals(ASK_ON)
    try:
        return ask(given, terminals.prompt, terminals.say)
    finally:
        terminals.close()


def _reboot() -> None:
    """Reboot at once (`systemctl -ff`: the reboot(2) call itself). The target is unmounted
    and synced, and the live system keeps nothing worth an orderly shutdown, which was
    seen to hang without a word under QEMU, with this unit stopped before its end."""
    subprocess.run(["sync"], check=False, timeout=600)
    done = subprocess.run(["systemctl", "reboot", "--force", "--force"],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise CommandError(["systemctl", "reboot", "--force", "--force"], done.returncode,
                           done.stderr)


@dataclass
class Env:
    """Where the installer reads and writes; tests replace parts of it."""

    console: Console = field(default_factory=Console)
    runner: Runner = run
    live_dir: Path = LIVE_DIR
    mountpoint: Path = MOUNTPOINT
    candidates: Callable[[], list[Candidate]] = _default_candidates
    links: Callable[[], list[Link]] = lambda: network.links_with_carrier(run)
    qualify: Callable[[str], tuple[bool, str]] = qualification
    ask: Callable[[Answers | None], Answers] = _ask
    reboot: Callable[[], None] = _reboot
    missing_tools: Callable[[], list[str]] = missing_tools


def install(cmdline: str, env: Env) -> int:
    """The whole install for the kernel command line `cmdline`. Returns 0 after the
    reboot was asked for, 2 when refused (no disk written), 1 when a step failed."""
    console = env.console
    try:
        mode, answers = gather(cmdline, env.runner)
    except AnswersError as e:
        return refuse(console, f"{len(e.problems)} problem(s) with the answers", e.problems)
    if answers is None or mode == "interactive":
        try:
            answers = env.ask(answers)
        except EOFError:
            return refuse(console, "no answers were given and there is no console to ask "
                                   "them on (give an answer file or kernel command line keys)")
    console.say(f"{MARK}answers accepted: node {answers.hostname}, controller "
                f"{answers.controller}, disk rule {answers.disk}")
    fit, report = env.qualify(answers.hardware_profile)
    if not fit:
        console.say(f"{MARK}qualification failed")
        console.say(report)
        return refuse(console, f"the server does not meet the hardware profile "
                               f"{answers.hardware_profile}")
    lacking = env.missing_tools()
    if lacking:
        return refuse(console, f"this live system lacks what the install runs: "
                               f"{', '.join(lacking)}")
    try:
        disk = disks.choose(answers.disk, env.candidates(), answers.wipe,
                            lambda c: disks.holds_data(c.path))
        link = network.resolve_interface(answers.network.interface, env.links())
    except (DiskError, NetworkError) as e:
        return refuse(console, str(e))
    console.say(f"{MARK}installing on {disk.describe()}, management NIC {link.name} "
                f"({link.mac})")
    try:
        write_disk(disk.path, answers, link.mac, env.live_dir, env.mountpoint, console.say,
                   env.runner)
    except InstallError as e:
        console.say(f"{MARK}{e}")
        console.say("The node was not installed; the console stays here. Boot the "
                    "installer again once the cause is fixed.")
        return 1
    console.say(f"{MARK}done, rebooting")
    try:
        env.reboot()
    except (CommandError, subprocess.TimeoutExpired) as e:
        console.say(f"{MARK}the reboot was refused ({e}): the disk is installed; reboot "
                    "the server by hand")
        return 1
    return 0


def main() -> int:
    return install(Path("/proc/cmdline").read_text(), Env())


if __name__ == "__main__":
    sys.exit(main())
