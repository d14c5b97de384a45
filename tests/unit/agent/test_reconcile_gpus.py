"""GPUs through the reconcile pass: claimed before the domain, given back after it, reverted."""

from __future__ import annotations

from pathlib import Path

from agent.drivers.gpu.nvidia import NvidiaGpuDriver
from agent.drivers.hypervisor.base import HostdevSpec
from agent.protocol import DesiredState, DesiredVgpu, ObservedVmState
from agent.reconcile import Reconciler
from tests.hwtrees import TREES
from tests.unit.agent.fake_kernel import FakeKernel
from tests.unit.agent.test_reconcile import FakeHypervisor, FakeStorage, _image_source, vm

RTX, RTX_AUDIO = "0000:01:00.0", "0000:01:00.1"
VGPU = DesiredVgpu(uuid="4b0f5d3a-1c2e-4f6a-8b9c-0d1e2f3a4b5c", parent="0000:18:00.0",
                   type_id="nvidia-1031")


def setup(tmp_path: Path, tree: str) -> tuple[Reconciler, FakeHypervisor, FakeKernel,
                                               NvidiaGpuDriver]:
    kernel = FakeKernel(TREES / tree, tmp_path / "root")
    gpu = NvidiaGpuDriver(tmp_path / "gpu", kernel.root, kernel.write, kernel.load_module,
                          telemetry=False)
    hv = FakeHypervisor()
    rec = Reconciler(hv, FakeStorage(tmp_path / "disks"), _image_source, tmp_path / "instances",
                     owner="node-1", stop_grace_s=1, gpu=gpu)
    return rec, hv, kernel, gpu


def test_gpu_vm_gets_its_group_and_gives_it_back_on_delete(tmp_path: Path) -> None:
    rec, hv, kernel, gpu = setup(tmp_path, "workstation")
    wanted = vm("aaaa-1").model_copy(update={"gpus": [RTX]})
    rec.apply(DesiredState(node_id="n", generation=1, vms=[wanted]))
    assert rec.wait_idle(10)
    assert hv.specs["aaaa-1"].hostdevs == (HostdevSpec("pci", RTX), HostdevSpec("pci", RTX_AUDIO))
    assert (kernel.driver(RTX), kernel.driver(RTX_AUDIO)) == ("vfio-pci", "vfio-pci")
    assert gpu.held() == {RTX: "aaaa-1"}
    rec.apply(DesiredState(node_id="n", generation=2, vms=[]))
    assert rec.wait_idle(10)
    assert hv.vms == {} and gpu.held() == {}
    assert (kernel.driver(RTX), kernel.driver(RTX_AUDIO)) == ("nvidia", "snd_hda_intel")


def test_failed_start_gives_the_gpu_back(tmp_path: Path) -> None:
    rec, hv, kernel, gpu = setup(tmp_path, "workstation")
    hv.fail_on = {"start"}
    rec.apply(DesiredState(node_id="n", generation=1,
                           vms=[vm("aaaa-1").model_copy(update={"gpus": [RTX]})]))
    assert rec.wait_idle(10)
    assert hv.vms == {} and gpu.held() == {}
    assert kernel.driver(RTX) == "nvidia"
    assert rec.observe()[0].state is ObservedVmState.ERROR


def test_a_group_the_host_needs_fails_the_vm_before_any_domain(tmp_path: Path) -> None:
    rec, hv, kernel, _gpu = setup(tmp_path, "workstation")
    rec.apply(DesiredState(node_id="n", generation=1,
                           vms=[vm("aaaa-1").model_copy(update={"gpus": ["0000:05:00.0"]})]))
    assert rec.wait_idle(10)
    (obs,) = rec.observe()
    assert obs.state is ObservedVmState.ERROR
    assert obs.error is not None and "driver ahci): the host needs it" in obs.error
    assert not any(c.startswith("define") for c in hv.calls) and kernel.writes == []


def test_vgpu_is_made_for_the_vm_and_removed_with_it(tmp_path: Path) -> None:
    rec, hv, _kernel, gpu = setup(tmp_path, "gpu-server")
    rec.apply(DesiredState(node_id="n", generation=1,
                           vms=[vm("aaaa-1").model_copy(update={"vgpus": [VGPU]})]))
    assert rec.wait_idle(10)
    assert hv.specs["aaaa-1"].hostdevs == (HostdevSpec("mdev", VGPU.uuid),)
    assert [m.uuid for m in gpu.mdevs.instances()] == [VGPU.uuid]
    rec.apply(DesiredState(node_id="n", generation=2, vms=[]))
    assert rec.wait_idle(10)
    assert gpu.mdevs.instances() == []
