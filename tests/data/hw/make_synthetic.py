"""Write the sysfs/procfs trees of servers this machine is not: run once, commit the output.

    python tests/data/hw/make_synthetic.py

Each tree has the layout `vauban-hw record` produces from a live host (class and
bus entries are symlinks into /sys/devices, `driver` and `iommu_group` are
relative symlinks), with ids, classes and groupings as lspci and sysfs show
them on such servers:

- gpu-server: 2-socket Xeon, 4 H100 SXM5 each alone in its IOMMU group (vGPU
  types offered), ConnectX-6 NICs with SR-IOV, NVMe disks, a BMC.
- workstation: Ryzen, an RTX 3090 whose IOMMU group holds its HD audio function
  (passable together), and an RTX 4090 behind the chipset sharing its group with
  the SATA controller and the NIC (not passable).
- no-iommu: a server with an A100 PCIe whose firmware and kernel leave the IOMMU off.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).parent
GIB_KB = 1024 * 1024


@dataclass
class Tree:
    root: Path
    groups: set[int] = field(default_factory=set)

    def write(self, rel: str, text: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text if text.endswith("\n") or not text else text + "\n")

    def link(self, rel: str, target: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, path)

    def mkdir(self, rel: str) -> None:
        (self.root / rel).mkdir(parents=True, exist_ok=True)

    # -- CPU and memory -------------------------------------------------------------------

    def cpus(self, vendor: str, model: str, sockets: int, cores: int, flags: str) -> None:
        blocks, n = [], 0
        for socket in range(sockets):
            for _thread in range(2):
                for core in range(cores):
                    blocks.append(
                        f"processor\t: {n}\nvendor_id\t: {vendor}\nmodel name\t: {model}\n"
                        f"physical id\t: {socket}\nsiblings\t: {cores * 2}\ncore id\t\t: {core}\n"
                        f"cpu cores\t: {cores}\nflags\t\t: {flags}\n")
                    n += 1
        self.write("proc/cpuinfo", "\n".join(blocks))

    def memory(self, total_gib: int, numa: list[list[int]], hugepages_1g: int = 0) -> None:
        total = total_gib * GIB_KB
        self.write("proc/meminfo", f"MemTotal:       {total} kB\n"
                                   f"MemFree:        {total - GIB_KB * 4} kB\n"
                                   f"MemAvailable:   {total - GIB_KB * 6} kB\n")
        for node, cpus in enumerate(numa):
            base = f"sys/devices/system/node/node{node}"
            self.write(f"{base}/cpulist", ",".join(f"{c[0]}-{c[-1]}" for c in _runs(cpus)))
            self.write(f"{base}/meminfo", f"Node {node} MemTotal:       {total // len(numa)} kB\n")
        for size, count in ((2048, 0), (1048576, hugepages_1g)):
            base = f"sys/kernel/mm/hugepages/hugepages-{size}kB"
            self.write(f"{base}/nr_hugepages", str(count))
            self.write(f"{base}/free_hugepages", str(count))

    # -- PCI ---------------------------------------------------------------------------------

    def pci(self, address: str, vendor: str, device: str, klass: str, driver: str | None,
            group: int | None, numa: int = -1, boot_vga: bool | None = None) -> str:
        """One PCI function; returns its directory under sys/devices."""
        dev = f"sys/devices/pci{address[:7]}/{address}"
        self.write(f"{dev}/vendor", f"0x{vendor}")
        self.write(f"{dev}/device", f"0x{device}")
        self.write(f"{dev}/class", f"0x{klass}")
        self.write(f"{dev}/numa_node", str(numa))
        self.write(f"{dev}/driver_override", "(null)")
        if boot_vga is not None:
            self.write(f"{dev}/boot_vga", "1" if boot_vga else "0")
        self.link(f"sys/bus/pci/devices/{address}", f"../../../devices/pci{address[:7]}/{address}")
        if driver:
            self.link(f"{dev}/driver", f"../../../bus/pci/drivers/{driver}")
            self.driver(driver)
        if group is not None:
            self.link(f"{dev}/iommu_group", f"../../../kernel/iommu_groups/{group}")
            self.link(f"sys/kernel/iommu_groups/{group}/devices/{address}",
                      f"../../../../devices/pci{address[:7]}/{address}")
        return dev

    def driver(self, name: str) -> None:
        for attr in ("bind", "unbind"):
            if not (self.root / f"sys/bus/pci/drivers/{name}/{attr}").exists():
                self.write(f"sys/bus/pci/drivers/{name}/{attr}", "")

    def mdev_type(self, address: str, type_id: str, name: str, available: int) -> None:
        base = f"sys/devices/pci{address[:7]}/{address}/mdev_supported_types/{type_id}"
        self.write(f"{base}/name", name)
        self.write(f"{base}/available_instances", str(available))
        self.write(f"{base}/device_api", "vfio-pci")
        self.write(f"{base}/description", f"num_heads=1, frl_config=60, framebuffer={name[-3:]}")
        self.write(f"{base}/create", "")

    # -- NICs and disks ----------------------------------------------------------------------

    def nic(self, name: str, address: str, mac: str, link: bool, speed: int | None,
            sriov_total: int = 0, mtu: int = 1500) -> None:
        base = f"sys/devices/pci{address[:7]}/{address}/net/{name}"
        self.link(f"sys/class/net/{name}", f"../../devices/pci{address[:7]}/{address}/net/{name}")
        self.write(f"{base}/address", mac)
        self.write(f"{base}/mtu", str(mtu))
        self.write(f"{base}/carrier", "1" if link else "0")
        self.write(f"{base}/speed", str(speed) if link and speed else "")  # unreadable when down
        self.link(f"{base}/device", "../../../" + address)
        if sriov_total:
            dev = f"sys/devices/pci{address[:7]}/{address}"
            self.write(f"{dev}/sriov_totalvfs", str(sriov_total))
            self.write(f"{dev}/sriov_numvfs", "0")

    def disk(self, name: str, address: str, size_gib: int, rotational: bool, model: str,
             serial: str, partitions: tuple[str, ...] = (), holders: tuple[str, ...] = (),
             removable: bool = False) -> None:
        base = f"sys/devices/pci{address[:7]}/{address}/block/{name}"
        self.link(f"sys/block/{name}", f"../devices/pci{address[:7]}/{address}/block/{name}")
        self.write(f"{base}/size", str(size_gib * 2 * 1024 * 1024))
        self.write(f"{base}/removable", "1" if removable else "0")
        self.write(f"{base}/ro", "0")
        self.write(f"{base}/queue/rotational", "1" if rotational else "0")
        self.write(f"{base}/device/model", model)
        self.write(f"{base}/device/serial", serial)
        self.mkdir(f"{base}/holders")
        for holder in holders:
            self.write(f"{base}/holders/{holder}", "")
        for part in partitions:
            self.write(f"{base}/{part}/partition", part[-1])
            self.mkdir(f"{base}/{part}/holders")

    def platform(self, mounts: str, swaps: str = "", cmdline: str = "", kvm_module: str = "",
                 iommu_units: tuple[str, ...] = (), ipmi: bool = False,
                 dmi_ipmi: bool = False) -> None:
        self.write("proc/mounts", mounts)
        self.write("proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n" + swaps)
        self.write("proc/cmdline", cmdline)
        self.write("sys/bus/pci/drivers_probe", "")
        if kvm_module:
            self.write("dev/kvm", "")
            self.write(f"sys/module/{kvm_module}/parameters/nested", "N")
        for unit in iommu_units:  # a file in each: git keeps no empty directory
            self.write(f"sys/class/iommu/{unit}/uevent", "")
        if ipmi:
            self.write("dev/ipmi0", "")
            self.write("sys/class/ipmi/ipmi0/dev", "241:0")
        if dmi_ipmi:
            self.write("sys/firmware/dmi/entries/38-0/type", "38")


def _runs(cpus: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for c in cpus:
        if runs and runs[-1][-1] == c - 1:
            runs[-1].append(c)
        else:
            runs.append([c])
    return runs


INTEL_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush " \
              "mmx fxsr sse sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc " \
              "x2apic aes avx avx2 avx512f vmx ept vpid"
AMD_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush " \
            "mmx fxsr sse sse2 ht syscall nx mmxext pdpe1gb rdtscp lm constant_tsc x2apic aes " \
            "avx avx2 avx512f svm npt avic"


def gpu_server(t: Tree) -> None:
    t.cpus("GenuineIntel", "Intel(R) Xeon(R) Gold 6430", sockets=2, cores=8, flags=INTEL_FLAGS)
    t.memory(512, numa=[list(range(0, 8)) + list(range(16, 24)),
                        list(range(8, 16)) + list(range(24, 32))], hugepages_1g=256)
    t.pci("0000:00:00.0", "8086", "09a2", "060000", None, 0, numa=0)
    t.pci("0000:00:17.0", "8086", "1bf2", "010601", "ahci", 5, numa=0)
    for i, (address, numa) in enumerate((("0000:18:00.0", 0), ("0000:2a:00.0", 0),
                                          ("0000:ba:00.0", 1), ("0000:db:00.0", 1))):
        t.pci(address, "10de", "2330", "030200", "nvidia", 30 + i, numa=numa, boot_vga=False)
        t.mdev_type(address, "nvidia-1030", "NVIDIA H100XM-10C", 8)
        t.mdev_type(address, "nvidia-1031", "NVIDIA H100XM-20C", 4)
        t.mdev_type(address, "nvidia-1034", "NVIDIA H100XM-80C", 1)
    t.pci("0000:03:00.0", "1a03", "2000", "030000", "ast", 8, numa=0, boot_vga=True)  # BMC VGA
    t.pci("0000:04:00.0", "8086", "1533", "020000", "igb", 9, numa=0)
    t.nic("eno1", "0000:04:00.0", "3c:ec:ef:10:00:01", link=True, speed=1000)
    for fn, (name, link) in enumerate((("ens1f0np0", True), ("ens1f1np1", True))):
        address = f"0000:4b:00.{fn}"
        t.pci(address, "15b3", "101d", "020000", "mlx5_core", 40 + fn, numa=0)
        t.nic(name, address, f"b8:ce:f6:20:00:0{fn}", link=link, speed=100000, sriov_total=8,
              mtu=9000)
    t.pci("0000:98:00.0", "15b3", "101d", "020000", "mlx5_core", 50, numa=1)
    t.nic("ens2f0np0", "0000:98:00.0", "b8:ce:f6:30:00:00", link=False, speed=None, sriov_total=8)
    for n, address in enumerate(("0000:61:00.0", "0000:62:00.0", "0000:63:00.0",
                                 "0000:64:00.0")):
        t.pci(address, "144d", "a824", "010802", "nvme", 60 + n, numa=0)
    t.disk("nvme0n1", "0000:61:00.0", 960, False, "SAMSUNG MZ1L2960HCJR-00A07", "S665NE0R100001",
           partitions=("nvme0n1p1", "nvme0n1p2"))
    t.disk("nvme1n1", "0000:62:00.0", 3840, False, "SAMSUNG MZQL23T8HCLS-00A07", "S64HNE0R200001")
    t.disk("nvme2n1", "0000:63:00.0", 3840, False, "SAMSUNG MZQL23T8HCLS-00A07", "S64HNE0R200002")
    t.disk("nvme3n1", "0000:64:00.0", 3840, False, "SAMSUNG MZQL23T8HCLS-00A07", "S64HNE0R200003",
           holders=("dm-0",))
    t.platform(mounts="/dev/nvme0n1p2 / ext4 rw,relatime 0 0\n"
                      "/dev/nvme0n1p1 /boot/efi vfat rw 0 0\nproc /proc proc rw 0 0\n",
               cmdline="BOOT_IMAGE=/vmlinuz root=/dev/nvme0n1p2 intel_iommu=on iommu=pt",
               kvm_module="kvm_intel", iommu_units=("dmar0", "dmar1"), ipmi=True)


def workstation(t: Tree) -> None:
    t.cpus("AuthenticAMD", "AMD Ryzen 9 7950X 16-Core Processor", sockets=1, cores=16,
           flags=AMD_FLAGS)
    t.memory(128, numa=[list(range(32))])
    t.pci("0000:00:00.0", "1022", "14d8", "060000", None, 0)
    t.pci("0000:00:01.1", "1022", "14db", "060400", "pcieport", 1)
    t.pci("0000:01:00.0", "10de", "2204", "030000", "nvidia", 1, boot_vga=False)
    t.pci("0000:01:00.1", "10de", "1aef", "040300", "snd_hda_intel", 1)
    t.pci("0000:00:02.1", "1022", "14db", "060400", "pcieport", 14)
    t.pci("0000:03:00.0", "1022", "43f6", "010601", "ahci", 14)
    t.pci("0000:04:00.0", "8086", "15f3", "020000", "igc", 14)
    t.pci("0000:05:00.0", "10de", "2684", "030000", "nvidia", 14, boot_vga=False)
    t.pci("0000:05:00.1", "10de", "22ba", "040300", "snd_hda_intel", 14)
    t.pci("0000:0e:00.0", "1002", "164e", "030000", "amdgpu", 20, boot_vga=True)
    t.pci("0000:0f:00.0", "144d", "a80a", "010802", "nvme", 21)
    t.nic("enp4s0", "0000:04:00.0", "a8:a1:59:00:00:01", link=True, speed=2500)
    t.disk("nvme0n1", "0000:0f:00.0", 2000, False, "Samsung SSD 990 PRO 2TB", "S6Z2NJ0W100001",
           partitions=("nvme0n1p1", "nvme0n1p2", "nvme0n1p3"))
    t.disk("sda", "0000:03:00.0", 8000, True, "ST8000VN004-3CP1", "WWZ00001")
    t.platform(mounts="/dev/nvme0n1p2 / ext4 rw 0 0\n/dev/nvme0n1p1 /boot/efi vfat rw 0 0\n",
               swaps="/dev/nvme0n1p3\tpartition\t16777212\t0\t-2\n",
               cmdline="BOOT_IMAGE=/vmlinuz root=/dev/nvme0n1p2 quiet splash",
               kvm_module="kvm_amd", iommu_units=("ivhd0",))


def no_iommu(t: Tree) -> None:
    t.cpus("GenuineIntel", "Intel(R) Xeon(R) Silver 4314 CPU @ 2.40GHz", sockets=1, cores=16,
           flags=INTEL_FLAGS)
    t.memory(128, numa=[list(range(32))])
    t.pci("0000:00:00.0", "8086", "09a2", "060000", None, None, numa=0)
    t.pci("0000:00:17.0", "8086", "a182", "010601", "ahci", None, numa=0)
    t.pci("0000:17:00.0", "10de", "20b5", "030200", "nvidia", None, numa=0, boot_vga=False)
    t.pci("0000:02:00.0", "1a03", "2000", "030000", "ast", None, numa=0, boot_vga=True)
    for fn, link in enumerate((True, False)):
        address = f"0000:31:00.{fn}"
        t.pci(address, "8086", "1572", "020000", "i40e", None, numa=0)
        t.nic(f"eno{fn + 1}", address, f"40:a6:b7:00:00:0{fn}", link=link, speed=10000,
              sriov_total=32)
    t.disk("sda", "0000:00:17.0", 480, False, "INTEL SSDSC2KB480G8", "PHYF000001",
           partitions=("sda1", "sda2"))
    t.disk("sdb", "0000:00:17.0", 480, False, "INTEL SSDSC2KB480G8", "PHYF000002")
    t.disk("sdc", "0000:00:17.0", 32, False, "SanDisk Ultra Fit", "4C530001", removable=True)
    t.platform(mounts="/dev/sda2 / ext4 rw 0 0\n/dev/sda1 /boot/efi vfat rw 0 0\n",
               swaps="/dev/sdb\tpartition\t499999996\t0\t-2\n",
               cmdline="BOOT_IMAGE=/vmlinuz root=/dev/sda2 ro quiet",
               kvm_module="kvm_intel", dmi_ipmi=True)


def main() -> None:
    for name, build in (("gpu-server", gpu_server), ("workstation", workstation),
                        ("no-iommu", no_iommu)):
        dest = HERE / name
        shutil.rmtree(dest, ignore_errors=True)
        build(Tree(dest))
        print(f"wrote {dest}")


if __name__ == "__main__":
    main()
