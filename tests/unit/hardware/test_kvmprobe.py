"""KVM probe pieces that need no QEMU: initramfs format, kernel choice, cache."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest

from hardware import kvmprobe
from hardware.kvmprobe import KvmProbe, build_initramfs, find_kernel, probe_kvm


def parse_newc(data: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    """name -> (mode, data, rdev) of a newc cpio archive."""
    entries: dict[str, tuple[int, bytes, tuple[int, int]]] = {}
    pos = 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, rmaj, rmin, namesize = fields[1], fields[6], fields[9], fields[10], \
            fields[11]
        name_start = pos + 110
        name = data[name_start:name_start + namesize - 1].decode()
        data_start = name_start + namesize + (-(110 + namesize) % 4)
        body = data[data_start:data_start + filesize]
        pos = data_start + filesize + (-filesize % 4)
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, body, (rmaj, rmin))


def test_initramfs_holds_busybox_console_and_init(tmp_path: Path) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF fake busybox")

    archive = build_initramfs(tmp_path / "initrd", busybox).read_bytes()
    entries = parse_newc(archive)

    assert len(archive) % 4 == 0
    assert entries["bin/busybox"] == (0o100755, b"\x7fELF fake busybox", (0, 0))
    assert entries["dev/console"][0] == 0o020600 and entries["dev/console"][2] == (5, 1)
    mode, init, _ = entries["init"]
    assert mode == 0o100755
    assert init.startswith(b"#!/bin/busybox sh\n")
    assert kvmprobe.MARKER.encode() in init and b"poweroff -f" in init


def test_kernel_prefers_the_running_one(tmp_path: Path) -> None:
    own = tmp_path / f"vmlinuz-{platform.release()}"
    newer = tmp_path / "vmlinuz-99.0"
    own.write_bytes(b"k")
    newer.write_bytes(b"k")
    os.utime(own, (1, 1))

    assert find_kernel(tmp_path) == own


def test_kernel_falls_back_to_newest(tmp_path: Path) -> None:
    old, new = tmp_path / "vmlinuz-1.0", tmp_path / "vmlinuz-2.0"
    old.write_bytes(b"k")
    new.write_bytes(b"k")
    os.utime(old, (1, 1))

    assert find_kernel(tmp_path) == new
    assert find_kernel(tmp_path / "empty-nonexistent") is None


def test_no_kvm_device_is_not_usable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(kvmprobe, "KVM_DEVICE", tmp_path / "no-kvm")

    result = probe_kvm(timeout=1.0)

    assert result == KvmProbe(False, False, f"{tmp_path / 'no-kvm'} does not exist")


def test_no_kernel_is_not_usable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_kvm = tmp_path / "kvm"
    fake_kvm.touch()
    monkeypatch.setattr(kvmprobe, "KVM_DEVICE", fake_kvm)
    monkeypatch.setattr(kvmprobe, "find_kernel", lambda: None)

    result = probe_kvm(timeout=1.0)

    assert result.device and not result.usable and "no kernel" in result.detail


def test_cached_result_is_reused_for_the_same_key(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    probes: list[float] = []

    def fake_probe(device: bool, kernel: Path | None, timeout: float) -> KvmProbe:
        probes.append(timeout)
        return KvmProbe(True, False, f"probe {len(probes)}")

    monkeypatch.setattr(kvmprobe, "_probe", fake_probe)
    monkeypatch.setattr(kvmprobe, "_qemu_version", lambda: "QEMU 7.2")
    cache = tmp_path / "state" / "kvm.json"

    first = probe_kvm(timeout=2.0, cache=cache)
    second = probe_kvm(timeout=2.0, cache=cache)
    assert first == second == KvmProbe(True, False, "probe 1")
    assert probes == [2.0]

    monkeypatch.setattr(kvmprobe, "_qemu_version", lambda: "QEMU 8.0")
    assert probe_kvm(timeout=2.0, cache=cache).detail == "probe 2"


def test_corrupt_cache_is_ignored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(kvmprobe, "_probe", lambda d, k, t: KvmProbe(True, True, "fresh"))
    cache = tmp_path / "kvm.json"
    cache.write_text("{not json")

    assert probe_kvm(cache=cache).detail == "fresh"
    assert "fresh" in cache.read_text()
