"""The installed system's own configuration, written into its root (`target`).

After `write_config` the target has: /etc/fstab by UUID, its host name, the
management network (systemd-networkd, enabled), root's SSH keys, its time zone, its
time sources, the hardware profile (and metrics listener) in /etc/vauban/agent.toml, and
/etc/vauban/firstboot.toml (0600) that the first boot consumes. Each writer takes
the target's path, so tests run them on a temporary folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from appliance.answers import Answers
from appliance.network import render

FIRSTBOOT = Path("etc/vauban/firstboot.toml")
AGENT_TOML = Path("etc/vauban/agent.toml")
# units the installed node starts at boot (the ISO enables the Vauban ones)
ENABLE = {"multi-user.target.wants": ["systemd-networkd.service"],
          "network-online.target.wants": ["systemd-networkd-wait-online.service"],
          "sockets.target.wants": ["systemd-networkd.socket"]}


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write `text` to `path` with `mode` from the start (a secret is never readable by
    others, not even for an instant), replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_fstab(target: Path, root_uuid: str, esp_uuid: str) -> None:
    _write(target / "etc/fstab",
           "# written by the Vauban installer: the root and the EFI system partition\n"
           f"UUID={root_uuid} / ext4 errors=remount-ro 0 1\n"
           f"UUID={esp_uuid} /boot/efi vfat umask=0077 0 1\n")


def write_hostname(target: Path, hostname: str) -> None:
    _write(target / "etc/hostname", hostname + "\n")
    _write(target / "etc/hosts",
           f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n"
           "::1\tlocalhost ip6-localhost ip6-loopback\n"
           "ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n")


def write_network(target: Path, answers: Answers, mac: str) -> None:
    """The networkd files for the management network on the NIC `mac`, networkd enabled."""
    folder = target / "etc/systemd/network"
    for name, text in render(answers.network, mac).items():
        _write(folder / name, text)
    for wants, units in ENABLE.items():
        for unit in units:
            link = target / "etc/systemd/system" / wants / unit
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(f"/lib/systemd/system/{unit}")


def write_ssh_keys(target: Path, keys: list[str]) -> None:
    if not keys:
        return
    ssh = target / "root/.ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    ssh.chmod(0o700)
    _write(ssh / "authorized_keys", "".join(k + "\n" for k in keys), 0o600)


def write_timezone(target: Path, timezone: str) -> None:
    _write(target / "etc/timezone", timezone + "\n")
    localtime = target / "etc/localtime"
    if localtime.is_symlink() or localtime.exists():
        localtime.unlink()
    localtime.symlink_to(f"/usr/share/zoneinfo/{timezone}")


def write_ntp(target: Path, servers: list[str]) -> None:
    """Time sources as the base role names them (none given: Debian's pool stays)."""
    if servers:
        _write(target / "etc/chrony/sources.d/vauban.sources",
               "".join(f"server {s} iburst\n" for s in servers))


def _toml_value(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int) else _toml_str(value)


def write_agent_settings(target: Path, settings: dict[str, str | int | bool]) -> None:
    """Set each of `settings` in the image's agent.toml (its other settings unchanged)."""
    path = target / AGENT_TOML
    text = path.read_text() if path.exists() else 'data_dir = "/var/lib/vauban/agent"\n'
    for key, value in settings.items():
        line = f"{key} = {_toml_value(value)}"
        pattern = re.compile(rf"^{re.escape(key)}\s*=.*$", re.M)
        text = pattern.sub(line, text) if pattern.search(text) \
            else text.rstrip("\n") + f"\n{line}\n"
    _write(path, text)


def write_firstboot(target: Path, answers: Answers) -> None:
    """What the first boot needs to join, readable by root only."""
    _write(target / FIRSTBOOT,
           "# consumed by vauban-firstboot.service, deleted once the node has joined\n"
           f"controller = {_toml_str(answers.controller)}\n"
           f"join_token = {_toml_str(answers.join_token)}\n"
           f"ca_sha256 = {_toml_str(answers.ca_sha256)}\n"
           f"name = {_toml_str(answers.hostname)}\n", 0o600)


def write_config(target: Path, answers: Answers, mac: str, root_uuid: str,
                 esp_uuid: str) -> None:
    """Everything above, into the unpacked root `target`. On failure (OSError) part of
    it may be written; the installer reports the step and the target is not booted."""
    write_fstab(target, root_uuid, esp_uuid)
    write_hostname(target, answers.hostname)
    write_network(target, answers, mac)
    write_ssh_keys(target, answers.root_ssh_keys)
    write_timezone(target, answers.timezone)
    write_ntp(target, answers.ntp_servers)
    write_agent_settings(target, answers.agent_settings())
    write_firstboot(target, answers)
