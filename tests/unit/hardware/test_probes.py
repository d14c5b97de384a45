"""Probes against recorded trees: what an operator would read off these servers."""

from __future__ import annotations

import os
from pathlib import Path

from hardware.cpu import probe_cpu
from hardware.discover import discover
from hardware.disks import probe_disks
from hardware.kvm_bmc import probe_bmc, probe_kvm
from hardware.memory import probe_memory, probe_numa
from hardware.nics import probe_nics
from hardware.pci import probe_iommu
from hardware.sysfs import Root, parse_cpulist


def test_cpulist_expands_ranges_and_singletons() -> None:
    assert parse_cpulist("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert parse_cpulist("") == []


def test_gpu_server_cpu_topology_and_virtualization(gpu_server: Root) -> None:
    cpu = probe_cpu(gpu_server)
    assert (cpu.vendor, cpu.model) == ("GenuineIntel", "Intel(R) Xeon(R) Gold 6430")
    assert (cpu.sockets, cpu.cores, cpu.threads) == (2, 16, 32)
    assert cpu.virtualization == "vmx"
    assert {"vmx", "ept", "vpid"} <= set(cpu.flags) and "svm" not in cpu.flags
    assert not cpu.is_virtual_machine


def test_workstation_is_amd_v(workstation: Root) -> None:
    cpu = probe_cpu(workstation)
    assert cpu.virtualization == "svm" and "npt" in cpu.flags
    assert (cpu.sockets, cpu.cores, cpu.threads) == (1, 16, 32)


def test_numa_nodes_memory_and_hugepages(gpu_server: Root) -> None:
    nodes = probe_numa(gpu_server)
    assert [n.id for n in nodes] == [0, 1]
    assert nodes[0].cpus == [*range(0, 8), *range(16, 24)]
    assert nodes[1].memory_mib == 256 * 1024
    memory = probe_memory(gpu_server)
    assert memory.total_mib == 512 * 1024
    assert [(p.size_kib, p.total) for p in memory.hugepages] == [(2048, 0), (1048576, 256)]


def test_disks_free_for_ceph_and_why_the_others_are_not(gpu_server: Root) -> None:
    disks = {d.name: d for d in probe_disks(gpu_server)}
    assert sorted(n for n, d in disks.items() if d.free_for_osd) == ["nvme1n1", "nvme2n1"]
    assert disks["nvme0n1"].in_use_reason == "/dev/nvme0n1p1 is mounted"
    assert disks["nvme3n1"].in_use_reason is not None and "dm-0" in disks["nvme3n1"].in_use_reason
    assert disks["nvme1n1"].size_bytes == 3840 * 1024**3
    assert disks["nvme1n1"].serial == "S64HNE0R200001"
    assert disks["nvme1n1"].model == "SAMSUNG MZQL23T8HCLS-00A07"


def test_swap_removable_and_rotational_disks(no_iommu: Root, workstation: Root) -> None:
    disks = {d.name: d for d in probe_disks(no_iommu)}
    assert disks["sdb"].in_use_reason == "/dev/sdb is swap"
    assert disks["sdc"].in_use_reason == "removable media" and disks["sdc"].removable
    hdd = {d.name: d for d in probe_disks(workstation)}["sda"]
    assert hdd.rotational and hdd.free_for_osd


def test_nics_driver_speed_link_and_sriov(gpu_server: Root) -> None:
    nics = {n.name: n for n in probe_nics(gpu_server)}
    assert set(nics) == {"eno1", "ens1f0np0", "ens1f1np1", "ens2f0np0"}
    mlx = nics["ens1f0np0"]
    assert (mlx.driver, mlx.speed_mbps, mlx.link, mlx.mtu) == ("mlx5_core", 100000, True, 9000)
    assert (mlx.sriov_total_vfs, mlx.sriov_num_vfs, mlx.pci_address) == (8, 0, "0000:4b:00.0")
    down = nics["ens2f0np0"]
    assert not down.link and down.speed_mbps is None  # the kernel refuses to read it
    assert nics["eno1"].sriov_total_vfs == 0 and nics["eno1"].driver == "igb"


def test_iommu_on_and_off(gpu_server: Root, workstation: Root, no_iommu: Root) -> None:
    on = probe_iommu(gpu_server)
    assert on.enabled and on.kind == "Intel VT-d" and on.groups == 15
    assert probe_iommu(workstation).kind == "AMD-Vi"
    off = probe_iommu(no_iommu)
    assert not off.enabled and off.groups == 0
    assert "intel_iommu=on" in off.detail


def test_kvm_without_boot_probe_is_unknown_and_with_one_is_its_answer(gpu_server: Root) -> None:
    kvm = probe_kvm(gpu_server)
    assert (kvm.device, kvm.module, kvm.nested, kvm.usable) == (True, "kvm_intel", False, None)
    probed = probe_kvm(gpu_server, lambda: (False, "guest hung at kernel entry"))
    assert probed.usable is False and probed.detail == "guest hung at kernel entry"


def test_kvm_missing_device(tmp_path: object) -> None:
    from pathlib import Path

    kvm = probe_kvm(Root(Path(str(tmp_path))))
    assert not kvm.device and kvm.usable is False and "/dev/kvm is missing" in kvm.detail


def test_bmc_found_by_device_or_smbios(gpu_server: Root, no_iommu: Root, workstation: Root) -> None:
    assert probe_bmc(gpu_server).detail == "IPMI device /dev/ipmi0"
    smbios = probe_bmc(no_iommu)
    assert smbios.present and "SMBIOS" in smbios.detail
    assert not probe_bmc(workstation).present


def test_pci_devices_with_names_classes_and_groups(gpu_server: Root) -> None:
    pci = {d.address: d for d in discover(gpu_server).pci}
    gpu = pci["0000:18:00.0"]
    assert (gpu.vendor_id, gpu.device_id, gpu.class_id) == ("10de", "2330", "030200")
    assert gpu.vendor_name == "NVIDIA Corporation" and gpu.class_name == "3D controller"
    assert (gpu.driver, gpu.iommu_group, gpu.numa_node) == ("nvidia", 30, 0)
    assert pci["0000:00:00.0"].driver is None and pci["0000:00:00.0"].class_name == "Host bridge"


def test_a_live_probe_sees_what_this_machine_shows() -> None:
    """The probe on the machine running the suite, whichever it is (the recording under
    tests/data/hw/this-machine is of one machine of this workplace, not of every one)."""
    live = discover(Root("/"))
    cpuinfo = Path("/proc/cpuinfo").read_text()
    assert f"vendor_id\t: {live.cpu.vendor}" in cpuinfo
    assert f"model name\t: {live.cpu.model}" in cpuinfo
    assert live.cpu.threads == os.cpu_count()
    assert [d.address for d in live.pci] == sorted(os.listdir("/sys/bus/pci/devices"))
    net = Path("/sys/class/net")
    assert sorted(n.name for n in live.nics if n.physical) == \
        sorted(n.name for n in net.iterdir() if (n / "device").exists())
    assert live.iommu.groups == len(list(Path("/sys/kernel/iommu_groups").glob("*")))
