"""The appliance ISO built from this checkout: its contents, menu, SBOM, sum and
reproducibility (it boots, under BIOS and UEFI, in test_install.py)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from contextlib import ExitStack
from pathlib import Path

import pytest

from iso import build, hashing, layer, mounts

pytestmark = pytest.mark.integration


def _extract(iso: Path, dest: Path, *paths: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    argv = ["xorriso", "-osirrox", "on", "-indev", str(iso)]
    for path in paths:
        argv += ["-extract", path, str(dest / path.lstrip("/"))]
    subprocess.run(argv, check=True, capture_output=True)


def test_iso_holds_both_layers(built_iso: build.Result, tmp_path: Path) -> None:
    listing = subprocess.run(["xorriso", "-indev", str(built_iso.iso), "-find", "/",
                              "-type", "f"], check=True, capture_output=True,
                             text=True).stdout
    for path in ("/live/00-base.squashfs", "/live/10-vauban.squashfs", "/live/vmlinuz",
                 "/live/initrd.img", "/live/filesystem.module", "/boot/grub/grub.cfg",
                 "/efi.img"):
        assert f"'{path}'" in listing, path
    _extract(built_iso.iso, tmp_path, "/live", "/boot/grub/grub.cfg", "/efi.img")
    efi = subprocess.run(["mdir", "-b", "-i", str(tmp_path / "efi.img"), "::/efi/boot"],
                         check=True, capture_output=True, text=True).stdout
    assert "bootx64.efi" in efi.lower()
    live = tmp_path / "live"
    assert (live / "filesystem.module").read_text() == "00-base.squashfs\n10-vauban.squashfs\n"
    grub_cfg = (tmp_path / "boot/grub/grub.cfg").read_text()
    # the live entry runs the same live system as the installer's (booted under BIOS and
    # UEFI in tests/iso/test_install.py), only without the installer
    live_entry = grub_cfg.split('menuentry "Live system (rescue, demo)" --hotkey=l {')[1]
    live_args = live_entry.split("\n")[1].split()
    assert "boot=live" in live_args and not [a for a in live_args if "vauban.install" in a]

    base_paths, base_sizes = build.squashfs_listing(live / "00-base.squashfs")
    assert base_sizes["etc/machine-id"] == 0
    assert not [p for p in base_paths if p.startswith("etc/ssh/ssh_host_")]
    assert "usr/sbin/libvirtd" in base_paths and "usr/bin/ceph" in base_paths
    vauban_paths, _ = build.squashfs_listing(live / "10-vauban.squashfs")
    assert "opt/vauban/venv/bin/vauban-agent" in vauban_paths
    assert "etc/systemd/system/vauban-agent.service" in vauban_paths
    # the first boot enables the agent once the node joined
    assert "etc/systemd/system/multi-user.target.wants/vauban-agent.service" not in vauban_paths
    for unit in ("vauban-installer", "vauban-firstboot", "vauban-banner", "vauban-hostkeys"):
        assert f"etc/systemd/system/{unit}.service" in vauban_paths
    for name in ("etc/vauban/agent.toml", "etc/vauban/release.json",
                 "etc/modules-load.d/vauban.conf", "etc/sysctl.d/60-vauban.conf",
                 "etc/udev/rules.d/65-vauban-kvm.rules"):
        assert name in vauban_paths
    assert not [p for p in vauban_paths if not p.startswith(("etc", "opt", "var"))]
    # migrations over TLS as on a rolled-out node: the hypervisor role's lines, its folders

    def layer_file(path: str) -> str:
        return subprocess.run(["unsquashfs", "-cat", str(live / "10-vauban.squashfs"), path],
                              check=True, capture_output=True, text=True).stdout

    for path, settings in layer.libvirt_lines().items():
        lines = layer_file(path).splitlines()
        for _regexp, line in settings:
            assert lines.count(line) == 1, (path, line)
    assert "etc/pki/libvirt/private" in vauban_paths and "etc/pki/qemu" in vauban_paths
    build.check_identity([live / "00-base.squashfs", live / "10-vauban.squashfs"])


def test_sbom_and_sum_describe_the_iso(built_iso: build.Result) -> None:
    digest, name = built_iso.sha256.read_text().split()
    assert name == built_iso.iso.name
    assert digest == hashing.file_sha256(built_iso.iso) == built_iso.digest
    doc = json.loads(built_iso.sbom.read_text())
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == "1.5"
    names = {c["name"] for c in doc["components"]}
    for wanted in ("linux-image-amd64", "libvirt-daemon", "ceph-common", "python3-rados",
                   "openssh-server", "vauban", "pydantic"):
        assert wanted in names, wanted
    purls = [c["purl"] for c in doc["components"]]
    assert any(p.startswith("pkg:deb/debian/libvirt-daemon@") for p in purls)
    assert any(p.startswith("pkg:pypi/vauban@") for p in purls)


def test_same_inputs_give_the_same_iso(built_iso: build.Result, wheels_tar: Path,
                                       tmp_path: Path) -> None:
    again = build.build(tmp_path, wheels_tar, log=tmp_path / "build.log", reuse=False)
    assert not again.cached
    assert again.digest == built_iso.digest
    cached = build.build(tmp_path / "cached", wheels_tar)
    assert cached.cached and cached.digest == built_iso.digest


def test_a_layer_that_deletes_or_hides_a_base_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "upper/etc").mkdir(parents=True)
    (tmp_path / "upper/etc/vauban.conf").write_text("")
    layer.check_only_additions(tmp_path / "upper")
    os.mknod(tmp_path / "upper/etc/passwd", 0o600 | stat.S_IFCHR, os.makedev(0, 0))
    with pytest.raises(ValueError, match="deletes /etc/passwd"):
        layer.check_only_additions(tmp_path / "upper")
    (tmp_path / "upper/etc/passwd").unlink()
    (tmp_path / "upper/usr").mkdir()
    os.setxattr(tmp_path / "upper/usr", "trusted.overlay.opaque", b"y")
    with pytest.raises(ValueError, match="hides /usr"):
        layer.check_only_additions(tmp_path / "upper")


def test_a_work_folder_with_a_mount_left_is_not_removed(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "merged/dev").mkdir(parents=True)
    with ExitStack() as stack:
        mounts.mount(stack, ["-t", "tmpfs", "tmpfs"], work / "merged/dev")
        (work / "merged/dev/node").write_text("")
        with pytest.raises(RuntimeError, match="still mounted"):
            mounts.remove_tree(work)
        assert (work / "merged/dev/node").exists()
    mounts.remove_tree(work)
    assert not work.exists()
