"""The ISO's GRUB menu: install (the default, after 5 s), install asking, live system.

The same grub.cfg serves BIOS and UEFI. GRUB and the kernel talk on both the screen and
the first serial port, so a BMC's serial-over-LAN (and a test's QEMU serial file) sees
the menu and the installer; each entry has a hotkey a serial console can type.
"""

from __future__ import annotations

from dataclasses import dataclass

KERNEL = "/live/vmlinuz"
INITRD = "/live/initrd.img"
# live-boot: no network probing of its own (systemd-networkd brings the network up)
COMMON_ARGS = ("boot=live", "nonetworking", "console=tty0", "console=ttyS0,115200")
TIMEOUT_S = 5


@dataclass(frozen=True)
class Entry:
    title: str
    hotkey: str
    args: tuple[str, ...]


ENTRIES = (
    Entry("Install Vauban node", "i", ("vauban.install=auto",)),
    Entry("Install Vauban node (ask the questions)", "a", ("vauban.install=interactive",)),
    Entry("Live system (rescue, demo)", "l", ()),
)


def grub_cfg(version: str) -> str:
    """grub.cfg for the ISO of `version`; the first entry is the default."""
    lines = [
        f"# Vauban {version} appliance",
        "serial --unit=0 --speed=115200",
        "terminal_input serial console",
        "terminal_output serial console",
        "set default=0",
        f"set timeout={TIMEOUT_S}",
        "",
    ]
    for entry in ENTRIES:
        args = " ".join((*COMMON_ARGS, *entry.args))
        lines += [
            f'menuentry "{entry.title}" --hotkey={entry.hotkey} {{',
            f"    linux {KERNEL} {args}",
            f"    initrd {INITRD}",
            "}",
        ]
    return "\n".join(lines) + "\n"
