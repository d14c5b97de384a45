"""NVIDIA GPU discovery: model names, IOMMU groups, vGPU types, passthrough blockers."""

from __future__ import annotations

from hardware.discover import discover
from hardware.pciids import marketing_name, parse
from hardware.sysfs import Root


def test_four_datacentre_gpus_each_alone_in_its_group(gpu_server: Root) -> None:
    gpus = discover(gpu_server).gpus
    assert [g.address for g in gpus] == ["0000:18:00.0", "0000:2a:00.0", "0000:ba:00.0",
                                         "0000:db:00.0"]
    assert {g.model for g in gpus} == {"H100 SXM5 80GB"}
    assert [g.iommu_group for g in gpus] == [30, 31, 32, 33]
    assert all(g.group_devices == [] and g.passthrough_blocker is None for g in gpus)
    assert [g.numa_node for g in gpus] == [0, 0, 1, 1]


def test_vgpu_types_offered_by_the_host_driver(gpu_server: Root) -> None:
    types = discover(gpu_server).gpus[0].mdev_types
    assert [(t.id, t.name, t.available_instances) for t in types] == [
        ("nvidia-1030", "NVIDIA H100XM-10C", 8),
        ("nvidia-1031", "NVIDIA H100XM-20C", 4),
        ("nvidia-1034", "NVIDIA H100XM-80C", 1),
    ]
    assert types[0].device_api == "vfio-pci"


def test_workstation_gpu_goes_with_its_audio_function(workstation: Root) -> None:
    gpus = {g.address: g for g in discover(workstation).gpus}
    assert set(gpus) == {"0000:01:00.0", "0000:05:00.0"}  # the AMD iGPU is not NVIDIA
    rtx = gpus["0000:01:00.0"]
    assert rtx.model == "GeForce RTX 3090"
    assert rtx.group_devices == ["0000:00:01.1", "0000:01:00.1"]  # root port and HD audio
    assert rtx.passthrough_blocker is None and rtx.mdev_types == []


def test_gpu_sharing_its_group_with_host_devices_is_blocked(workstation: Root) -> None:
    blocked = {g.address: g for g in discover(workstation).gpus}["0000:05:00.0"]
    assert blocked.passthrough_blocker == (
        "IOMMU group 14 also holds 0000:03:00.0 (SATA controller, driver ahci): "
        "the host needs it")
    assert "0000:04:00.0" in blocked.group_devices  # the NIC is in there too


def test_gpu_without_iommu_names_the_reason(no_iommu: Root) -> None:
    (gpu,) = discover(no_iommu).gpus
    assert gpu.model == "A100 PCIe 80GB" and gpu.iommu_group is None
    assert gpu.passthrough_blocker is not None
    assert gpu.passthrough_blocker.startswith("IOMMU is off")


def test_pci_ids_parsing_and_names() -> None:
    ids = parse("# comment\n10de  NVIDIA Corporation\n\t2330  GH100[H100 SXM5 80GB]\n"
                "\t\t10de 16c1  H100 SXM5 80GB\nC 03  Display controller\n\t02  3D controller\n"
                "\t\t00  prog-if\n")
    assert ids.vendors == {"10de": "NVIDIA Corporation"}
    assert ids.device("10de", "2330") == "GH100[H100 SXM5 80GB]"
    assert ids.class_name("030200") == "3D controller"
    assert ids.class_name("030000") == "Display controller"
    assert ids.class_name("ff0000") == "class ff0000"
    assert marketing_name("GA102 [GeForce RTX 3090]", "2204") == "GeForce RTX 3090"
    assert marketing_name("Some GPU", "1234") == "Some GPU"
    assert marketing_name(None, "2bff") == "NVIDIA device 2bff"
