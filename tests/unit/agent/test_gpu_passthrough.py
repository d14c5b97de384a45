"""Binding IOMMU groups to vfio-pci and back, and vGPUs, on writable copies of recorded trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.drivers.gpu.base import GpuError
from agent.drivers.gpu.mdev import MdevManager
from agent.drivers.gpu.vfio import GroupBinder
from agent.protocol import DesiredVgpu
from tests.hwtrees import TREES
from tests.unit.agent.fake_kernel import FakeKernel

VM = "9b1d3c2e-0000-4000-8000-000000000001"
OTHER_VM = "9b1d3c2e-0000-4000-8000-000000000002"
RTX, RTX_AUDIO, ROOT_PORT = "0000:01:00.0", "0000:01:00.1", "0000:00:01.1"
DEV = "sys/bus/pci/devices"


@pytest.fixture
def workstation(tmp_path: Path) -> FakeKernel:
    return FakeKernel(TREES / "workstation", tmp_path / "root")


def binder(kernel: FakeKernel, tmp_path: Path) -> GroupBinder:
    return GroupBinder(kernel.root, tmp_path / "records", kernel.write, kernel.load_module)


def test_attach_binds_the_whole_group_and_records_original_drivers(
        workstation: FakeKernel, tmp_path: Path) -> None:
    bound = binder(workstation, tmp_path).attach(VM, RTX)
    assert bound == [RTX, RTX_AUDIO]  # the root port stays with the host
    assert workstation.modules == ["vfio-pci"]
    assert workstation.writes == [
        (f"{DEV}/{RTX}/driver_override", "vfio-pci"),
        (f"{DEV}/{RTX}/driver/unbind", RTX),
        ("sys/bus/pci/drivers_probe", RTX),
        (f"{DEV}/{RTX_AUDIO}/driver_override", "vfio-pci"),
        (f"{DEV}/{RTX_AUDIO}/driver/unbind", RTX_AUDIO),
        ("sys/bus/pci/drivers_probe", RTX_AUDIO),
    ]
    assert (workstation.driver(RTX), workstation.driver(RTX_AUDIO)) == ("vfio-pci", "vfio-pci")
    assert workstation.driver(ROOT_PORT) == "pcieport"
    record = binder(workstation, tmp_path).record(RTX)
    assert record == {"owner": VM, "drivers": {RTX: "nvidia", RTX_AUDIO: "snd_hda_intel"}}


def test_release_restores_each_driver_from_the_record_even_after_a_restart(
        workstation: FakeKernel, tmp_path: Path) -> None:
    binder(workstation, tmp_path).attach(VM, RTX)
    workstation.writes.clear()
    restarted = binder(workstation, tmp_path)  # a new agent process reads the record
    assert restarted.held() == {RTX: VM}
    restarted.release(RTX)
    assert workstation.writes == [
        (f"{DEV}/{RTX}/driver_override", "nvidia"),
        (f"{DEV}/{RTX}/driver/unbind", RTX),
        ("sys/bus/pci/drivers_probe", RTX),
        (f"{DEV}/{RTX}/driver_override", "\n"),
        (f"{DEV}/{RTX_AUDIO}/driver_override", "snd_hda_intel"),
        (f"{DEV}/{RTX_AUDIO}/driver/unbind", RTX_AUDIO),
        ("sys/bus/pci/drivers_probe", RTX_AUDIO),
        (f"{DEV}/{RTX_AUDIO}/driver_override", "\n"),
    ]
    assert (workstation.driver(RTX), workstation.driver(RTX_AUDIO)) == ("nvidia", "snd_hda_intel")
    assert workstation.override(RTX) == "(null)" and workstation.override(RTX_AUDIO) == "(null)"
    assert restarted.held() == {} and restarted.record(RTX) is None
    restarted.release(RTX)  # nothing on record: nothing to do
    assert len(workstation.writes) == 8


def test_attach_again_for_the_same_vm_changes_nothing_and_another_vm_is_refused(
        workstation: FakeKernel, tmp_path: Path) -> None:
    gpus = binder(workstation, tmp_path)
    gpus.attach(VM, RTX)
    count = len(workstation.writes)
    assert gpus.attach(VM, RTX) == [RTX, RTX_AUDIO]
    assert len(workstation.writes) == count
    with pytest.raises(GpuError, match=f"GPU {RTX} is already held for VM {VM}"):
        gpus.attach(OTHER_VM, RTX)


def test_a_failed_bind_puts_every_device_back(workstation: FakeKernel, tmp_path: Path) -> None:
    workstation.refuse.add((RTX_AUDIO, "vfio-pci"))  # vfio-pci does not claim the audio function
    gpus = binder(workstation, tmp_path)
    with pytest.raises(GpuError, match=f"{RTX_AUDIO} is driven by no driver after asking "
                                       "for vfio-pci"):
        gpus.attach(VM, RTX)
    assert (workstation.driver(RTX), workstation.driver(RTX_AUDIO)) == ("nvidia", "snd_hda_intel")
    assert workstation.override(RTX) == workstation.override(RTX_AUDIO) == "(null)"
    assert gpus.held() == {}
    # both were given back, the audio function first (newest first)
    assert workstation.writes[6:] == [
        (f"{DEV}/{RTX_AUDIO}/driver_override", "snd_hda_intel"),
        ("sys/bus/pci/drivers_probe", RTX_AUDIO),
        (f"{DEV}/{RTX_AUDIO}/driver_override", "\n"),
        (f"{DEV}/{RTX}/driver_override", "nvidia"),
        (f"{DEV}/{RTX}/driver/unbind", RTX),
        ("sys/bus/pci/drivers_probe", RTX),
        (f"{DEV}/{RTX}/driver_override", "\n"),
    ]


def test_group_with_a_device_the_host_needs_is_refused_untouched(
        workstation: FakeKernel, tmp_path: Path) -> None:
    with pytest.raises(GpuError, match="0000:03:00.0 \\(SATA controller, driver ahci\\): "
                                       "the host needs it"):
        binder(workstation, tmp_path).attach(VM, "0000:05:00.0")
    assert workstation.writes == [] and workstation.modules == []
    assert workstation.driver("0000:03:00.0") == "ahci"


def test_no_iommu_is_refused_with_the_reason(tmp_path: Path) -> None:
    kernel = FakeKernel(TREES / "no-iommu", tmp_path / "root")
    with pytest.raises(GpuError, match="GPU 0000:17:00.0 cannot be passed through: IOMMU is off"):
        binder(kernel, tmp_path).attach(VM, "0000:17:00.0")
    assert kernel.writes == []


def test_bad_addresses(workstation: FakeKernel, tmp_path: Path) -> None:
    gpus = binder(workstation, tmp_path)
    with pytest.raises(GpuError, match="no PCI device 0000:99:00.0 on this node"):
        gpus.attach(VM, "0000:99:00.0")
    with pytest.raises(GpuError, match="0000:03:00.0 is not an NVIDIA GPU \\(SATA controller\\)"):
        gpus.attach(VM, "0000:03:00.0")


def test_vgpu_create_list_and_remove(tmp_path: Path) -> None:
    kernel = FakeKernel(TREES / "gpu-server", tmp_path / "root")
    mdevs = MdevManager(kernel.root, kernel.write)
    spec = DesiredVgpu(uuid="4b0f5d3a-1c2e-4f6a-8b9c-0d1e2f3a4b5c", parent="0000:18:00.0",
                       type_id="nvidia-1034")
    mdevs.create(spec)
    assert kernel.writes == [
        (f"{DEV}/0000:18:00.0/mdev_supported_types/nvidia-1034/create", spec.uuid)]
    (made,) = mdevs.instances()
    assert (made.uuid, made.type_id, made.parent) == (spec.uuid, "nvidia-1034", "0000:18:00.0")
    mdevs.create(spec)  # already there: nothing more
    assert len(kernel.writes) == 1
    other = spec.model_copy(update={"uuid": "4b0f5d3a-1c2e-4f6a-8b9c-0d1e2f3a4b5d"})
    with pytest.raises(GpuError, match="has no nvidia-1034 \\(NVIDIA H100XM-80C\\) instance left"):
        mdevs.create(other)
    mdevs.remove(spec.uuid)
    assert kernel.writes[-1] == (f"sys/bus/mdev/devices/{spec.uuid}/remove", "1")
    assert mdevs.instances() == []
    mdevs.remove(spec.uuid)  # gone already
    assert len(kernel.writes) == 2


def test_vgpu_bad_type_names_what_the_gpu_offers(tmp_path: Path) -> None:
    kernel = FakeKernel(TREES / "gpu-server", tmp_path / "root")
    spec = DesiredVgpu(uuid="4b0f5d3a-1c2e-4f6a-8b9c-0d1e2f3a4b5c", parent="0000:18:00.0",
                       type_id="nvidia-9999")
    with pytest.raises(GpuError, match="offers no vGPU type nvidia-9999; it offers: "
                                       "nvidia-1030, nvidia-1031, nvidia-1034"):
        MdevManager(kernel.root, kernel.write).create(spec)
    ws = FakeKernel(TREES / "workstation", tmp_path / "ws")
    with pytest.raises(GpuError, match="none \\(no vGPU host driver\\)"):
        MdevManager(ws.root, ws.write).create(spec.model_copy(update={"parent": RTX}))
    assert kernel.writes == [] and ws.writes == []


def test_nvidia_driver_reports_gpus_with_their_vgpus(tmp_path: Path) -> None:
    from agent.drivers.gpu.nvidia import NvidiaGpuDriver

    kernel = FakeKernel(TREES / "gpu-server", tmp_path / "root")
    driver = NvidiaGpuDriver(tmp_path / "records", kernel.root, kernel.write, kernel.load_module,
                             telemetry=False)
    spec = DesiredVgpu(uuid="4b0f5d3a-1c2e-4f6a-8b9c-0d1e2f3a4b5c", parent="0000:2a:00.0",
                       type_id="nvidia-1030")
    driver.create_vgpu(spec)
    gpus, detail = driver.discover()
    assert [g.pci.address for g in gpus] == ["0000:18:00.0", "0000:2a:00.0", "0000:ba:00.0",
                                             "0000:db:00.0"]
    assert [m.uuid for m in gpus[1].mdevs] == [spec.uuid] and gpus[0].mdevs == []
    assert gpus[1].pci.mdev_types[0].available_instances == 7
    assert all(g.nvml is None for g in gpus) and detail == "NVML not consulted"
    assert driver.attach_group("vm-1", "0000:18:00.0") == ["0000:18:00.0"]
    assert driver.held() == {"0000:18:00.0": "vm-1"}
    driver.release_group("0000:18:00.0")
    driver.remove_vgpu(spec.uuid)
    assert driver.held() == {} and driver.discover()[0][1].mdevs == []
    driver.close()


def test_nvidia_driver_without_an_nvidia_driver_on_the_host_finds_no_telemetry(
        tmp_path: Path) -> None:
    import pynvml

    from agent.drivers.gpu.nvidia import NvidiaGpuDriver

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("an NVIDIA driver is installed here; the no-driver path cannot be observed")
    driver = NvidiaGpuDriver(tmp_path / "records")  # the live host, no sysfs changes asked
    gpus, detail = driver.discover()
    assert "no NVIDIA driver" in detail
    assert all(g.nvml is None for g in gpus)
    driver.close()
