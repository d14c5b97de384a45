"""Inventory probes read from a root directory, so a recorded tree stands in for a host."""

from __future__ import annotations

from pathlib import Path

from agent import inventory
from tests.hwtrees import TREES


def _tree(root: Path) -> Path:
    (root / "proc").mkdir(parents=True)
    (root / "proc/cpuinfo").write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC 9654 96-Core Processor\n"
        "flags\t\t: fpu vme svm npt avx2 aes sse\n\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 9654 96-Core Processor\n"
        "flags\t\t: fpu vme svm npt avx2 aes sse\n")
    (root / "proc/meminfo").write_text("MemTotal:       263921456 kB\nMemFree: 1 kB\n")
    for dev, size, rot, model in (("nvme0n1", "7501476528", "0", "SAMSUNG MZQL27T6"),
                                  ("sda", "3907029168", "1", "ST2000NM"),
                                  ("loop0", "100", "0", "")):
        d = root / "sys/block" / dev
        (d / "queue").mkdir(parents=True)
        (d / "device").mkdir()
        (d / "size").write_text(size + "\n")
        (d / "queue/rotational").write_text(rot + "\n")
        if model:
            (d / "device/model").write_text(model + "  \n")
    for nic, mac, state in (("eno1", "3c:ec:ef:00:00:01", "up"), ("lo", "00:00:00:00:00:00", "up"),
                            ("eno2", "3c:ec:ef:00:00:02", "down")):
        d = root / "sys/class/net" / nic
        d.mkdir(parents=True)
        (d / "address").write_text(mac + "\n")
        (d / "mtu").write_text("9000\n")
        (d / "operstate").write_text(state + "\n")
        (d / "carrier").write_text(("1" if state == "up" else "0") + "\n")
    return root


def test_cpu_and_memory(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    model, flags = inventory.cpu_model_and_flags(root)
    assert model == "AMD EPYC 9654 96-Core Processor"
    assert flags == ["aes", "avx2", "npt", "svm"]
    assert inventory.memory_mib(root) == 263921456 // 1024


def test_disks_skip_loop_devices(tmp_path: Path) -> None:
    disks = inventory.disks(_tree(tmp_path))
    assert [(d.name, d.size_bytes, d.rotational, d.model) for d in disks] == [
        ("nvme0n1", 7501476528 * 512, False, "SAMSUNG MZQL27T6"),
        ("sda", 3907029168 * 512, True, "ST2000NM"),
    ]


def test_nics_skip_loopback(tmp_path: Path) -> None:
    nics = inventory.nics(_tree(tmp_path))
    assert [(n.name, n.mac, n.mtu, n.up) for n in nics] == [
        ("eno1", "3c:ec:ef:00:00:01", 9000, True),
        ("eno2", "3c:ec:ef:00:00:02", 9000, False),
    ]


def test_this_machine_reports_something_real() -> None:
    model, _flags = inventory.cpu_model_and_flags()
    assert model != "unknown"
    assert inventory.memory_mib() > 0 and inventory.cpu_count() >= 1


def test_hardware_reporter_qualifies_with_the_agents_kvm_probe_and_caches() -> None:
    from hardware.qualify import load_profile
    from hardware.sysfs import Root

    tree = Root(TREES / "gpu-server")
    reporter = inventory.HardwareReporter(load_profile("gpu"), True, "booted in 0.4 s",
                                          refresh_s=3600, root=tree)
    hw, report = reporter.current()
    assert hw.kvm.usable is True and hw.kvm.detail == "booted in 0.4 s"
    assert report.profile == "gpu" and report.verdict == "PASS"
    assert reporter.current()[0] is hw  # not probed again before refresh_s


def test_gpu_driver_auto_picks_nvidia_only_where_an_nvidia_gpu_is() -> None:
    from agent.main import gpu_driver_name
    from hardware.sysfs import Root

    assert gpu_driver_name("auto", Root(TREES / "gpu-server")) == "nvidia"
    assert gpu_driver_name("auto", Root(TREES / "this-machine")) == "none"
    assert gpu_driver_name("none", Root(TREES / "gpu-server")) == "none"


def test_ssh_host_keys_are_read_without_comments_and_junk_is_left_out(tmp_path: Path) -> None:
    ssh = tmp_path / "etc/ssh"
    ssh.mkdir(parents=True)
    (ssh / "ssh_host_ed25519_key.pub").write_text("ssh-ed25519 AAAAC3Nza1 root@old-name\n")
    (ssh / "ssh_host_rsa_key.pub").write_text("ssh-rsa AAAAB3Nza2\n")
    (ssh / "ssh_host_ecdsa_key.pub").write_bytes(b"\xff\xfe not a key")
    (ssh / "ssh_host_dsa_key.pub").write_text("ssh-dss AAAAB3NzaC1kc3M\n")  # type not pinned
    (ssh / "ssh_host_long_key.pub").write_text("ssh-ed25519 " + "A" * 5000 + "\n")
    (ssh / "ssh_host_ed25519_key").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert inventory.ssh_host_keys(tmp_path) == ["ssh-ed25519 AAAAC3Nza1", "ssh-rsa AAAAB3Nza2"]


def test_no_ssh_folder_means_no_host_keys(tmp_path: Path) -> None:
    assert inventory.ssh_host_keys(tmp_path) == []
