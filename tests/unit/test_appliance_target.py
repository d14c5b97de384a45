"""What the installer writes into the installed system's root, on a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

from agent.settings_file import agent_config
from appliance.answers import merge
from appliance.install import grub_cfg, kernel_version, partition_path
from appliance.target import write_config

CA = "cd" * 32
MAC = "52:54:00:12:34:56"


def answers(tmp_path: Path, **extra: object):  # type: ignore[no-untyped-def]
    (tmp_path / "zi").mkdir(exist_ok=True)
    (tmp_path / "zi/UTC").write_bytes(b"TZif")
    return merge({}, {"controller": "https://10.0.0.1:8443", "join_token": 'tok-"quoted"',
                      "ca_sha256": CA, "hostname": "node-3", **extra}, tmp_path / "zi")


def test_write_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/vauban").mkdir(parents=True)
    (root / "etc/vauban/agent.toml").write_text(
        'data_dir = "/var/lib/vauban/agent"\nhardware_profile = "compute"\n')
    a = answers(tmp_path, hardware_profile="lab", ntp_servers=["ntp1.example"],
                root_ssh_keys=["ssh-ed25519 AAAAC3Nza op@desk"], metrics_address="10.0.0.21")
    write_config(root, a, MAC, "root-uuid", "esp-uuid")
    assert (root / "etc/fstab").read_text().splitlines()[1:] == [
        "UUID=root-uuid / ext4 errors=remount-ro 0 1",
        "UUID=esp-uuid /boot/efi vfat umask=0077 0 1"]
    assert (root / "etc/hostname").read_text() == "node-3\n"
    assert "127.0.1.1\tnode-3" in (root / "etc/hosts").read_text()
    assert f"MACAddress={MAC}" in (root / "etc/systemd/network/10-vauban-mgmt.network").read_text()
    wants = root / "etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
    assert os.readlink(wants) == "/lib/systemd/system/systemd-networkd.service"
    keys = root / "root/.ssh/authorized_keys"
    assert keys.read_text() == "ssh-ed25519 AAAAC3Nza op@desk\n"
    assert keys.stat().st_mode & 0o777 == 0o600
    assert (root / "root/.ssh").stat().st_mode & 0o777 == 0o700
    assert (root / "etc/chrony/sources.d/vauban.sources").read_text() == \
        "server ntp1.example iburst\n"
    assert (root / "etc/vauban/agent.toml").read_text() == \
        'data_dir = "/var/lib/vauban/agent"\nhardware_profile = "lab"\n' \
        'metrics_address = "10.0.0.21"\n'
    firstboot = root / "etc/vauban/firstboot.toml"
    assert firstboot.stat().st_mode & 0o777 == 0o600
    import tomllib

    assert tomllib.loads(firstboot.read_text()) == {
        "controller": "https://10.0.0.1:8443", "join_token": 'tok-"quoted"',
        "ca_sha256": CA, "name": "node-3"}


def test_the_agent_reads_the_metrics_listener_the_installer_wrote(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_config(root, answers(tmp_path, metrics_address="127.0.0.1", metrics_port=9600,
                               metrics_tls=False), MAC, "root-uuid", "esp-uuid")
    config = agent_config(root / "etc/vauban/agent.toml", {})
    assert (config.metrics_address, config.metrics_port, config.metrics_tls) == (
        "127.0.0.1", 9600, False)
    assert config.hardware_profile == "compute"


def test_partition_paths() -> None:
    assert partition_path(Path("/dev/sda"), 1) == Path("/dev/sda1")
    assert partition_path(Path("/dev/nvme0n1"), 3) == Path("/dev/nvme0n1p3")
    assert partition_path(Path("/dev/loop7"), 2) == Path("/dev/loop7p2")


def test_kernel_version_takes_the_newest_with_an_initrd(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    for v in ("6.1.0-9-amd64", "6.1.0-10-amd64", "6.1.0-11-amd64"):
        (boot / f"vmlinuz-{v}").write_bytes(b"k")
    for v in ("6.1.0-9-amd64", "6.1.0-10-amd64"):
        (boot / f"initrd.img-{v}").write_bytes(b"i")
    assert kernel_version(tmp_path) == "6.1.0-10-amd64"


def test_grub_cfg_boots_the_root_by_uuid_on_both_consoles() -> None:
    text = grub_cfg("1234-uuid", "6.1.0-10-amd64")
    assert "search --no-floppy --fs-uuid --set=root 1234-uuid" in text
    assert ("linux /boot/vmlinuz-6.1.0-10-amd64 root=UUID=1234-uuid ro console=tty0 "
            "console=ttyS0,115200") in text
    assert "terminal_output console serial" in text
