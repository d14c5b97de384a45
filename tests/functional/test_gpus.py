"""GPU scheduling through the API: nodes report recorded servers' GPUs, VMs ask for them."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from agent.drivers.gpu.nvidia import NvidiaGpuDriver
from agent.protocol import GpuTelemetry, Inventory, NvmlGpu, ObservedVm, ObservedVmState, XidEvent
from controller.db.models import GpuAssignment, Instance, VgpuAssignment
from controller.region import Region
from hardware.discover import discover
from hardware.qualify import load_profile, qualify
from hardware.sysfs import Root
from tests.functional.helpers import RAW_IMAGE, Api, inventory
from tests.hwtrees import TREES


def server_inventory(tree: str, tmp_path: Path, telemetry: bool = False) -> Inventory:
    """What an agent on the recorded server would report (NVML readings made up)."""
    root = Root(TREES / tree)
    gpus, detail = NvidiaGpuDriver(tmp_path / f"records-{tree}", root, telemetry=False).discover()
    if telemetry:
        gpus[0] = gpus[0].model_copy(update={"nvml": NvmlGpu(
            address=gpus[0].pci.address, name="NVIDIA H100 80GB HBM3", uuid="GPU-1234",
            telemetry=GpuTelemetry(utilization_pct=87, memory_total_bytes=80 * 1024**3,
                                   memory_used_bytes=20 * 1024**3, temperature_c=61,
                                   power_w=412.5, ecc_uncorrected_volatile=0,
                                   xid_events=[XidEvent(xid=79, at=datetime.now(UTC))]))})
    hw = discover(root)
    return inventory(cpus=64, memory_mib=512 * 1024).model_copy(update={
        "hardware": hw, "qualification": qualify(hw, load_profile("gpu")), "gpus": gpus,
        "nvml_detail": detail})


@pytest.fixture
def api(client: FlaskClient, region: Region) -> Api:
    a = Api(client, region)
    assert a.import_image("tiny", RAW_IMAGE).status_code == 201
    return a


def create(api: Api, name: str, **extra: Any) -> Any:
    body = {"name": name, "image": "tiny", "vcpus": 2, "memory_mib": 1024, **extra}
    return api.post("/api/v1/instances", json=body)


def test_vm_with_gpus_lands_on_the_gpu_node_and_holds_them(api: Api, tmp_path: Path) -> None:
    api.join_node("plain", cpus=64, memory_mib=512 * 1024)
    gpu_node = api.join_node("gpu-1", inv=server_inventory("gpu-server", tmp_path))
    r = create(api, "train-1", gpus=[{"model": "H100", "count": 2}])
    assert r.status_code == 202, r.json
    vm = api.get("/api/v1/instances/train-1").json
    assert vm["node_name"] == "gpu-1"
    # two GPUs of one NUMA node
    assert vm["gpus"] == [{"address": "0000:18:00.0", "model": "H100 SXM5 80GB"},
                          {"address": "0000:2a:00.0", "model": "H100 SXM5 80GB"}]
    [desired] = api.desired(gpu_node)["vms"]
    assert desired["gpus"] == ["0000:18:00.0", "0000:2a:00.0"] and desired["vgpus"] == []
    # a VM without GPUs goes to the plain node, leaving GPUs to those who need them
    assert create(api, "web-1").status_code == 202
    assert api.get("/api/v1/instances/web-1").json["node_name"] == "plain"
    audit = api.get("/api/v1/audit-events?action=instance.create").json
    assert {"0000:18:00.0 H100 SXM5 80GB", "0000:2a:00.0 H100 SXM5 80GB"} <= set(
        next(e for e in audit if e["detail"]["name"] == "train-1")["detail"]["gpus"])


def test_gpus_in_use_are_not_given_twice_and_are_freed_on_delete(api: Api, region: Region,
                                                                  tmp_path: Path) -> None:
    node = api.join_node("gpu-1", inv=server_inventory("gpu-server", tmp_path))
    assert create(api, "a", gpus=[{"model": "H100", "count": 3}]).status_code == 202
    r = create(api, "b", gpus=[{"model": "H100", "count": 2}])
    assert r.status_code == 409
    assert r.json["detail"] == (
        "no node can host 2 vCPUs, 1024 MiB, 1 GiB of disk and 2 H100 GPUs: gpu-1 has 1 of 4 H100 "
        "GPUs free, 2 asked (in use by a)")
    assert create(api, "c", gpus=[{"model": "H100"}]).status_code == 202
    listed = {g["address"]: g for g in api.get("/api/v1/gpus").json}
    assert [g["instance"] for g in listed.values()] == ["a", "a", "a", "c"]
    assert {g["state"] for g in listed.values()} == {"in-use"}
    # the delete frees them once the node confirms the VM is gone
    vm_a = api.get("/api/v1/instances/a").json
    assert api.delete("/api/v1/instances/a").status_code == 202
    assert create(api, "d", gpus=[{"model": "H100"}]).status_code == 409  # not yet
    desired = api.desired(node)
    seen = [ObservedVm(id=v["id"], name=v["name"], state=ObservedVmState.RUNNING,
                       power_seq=v["power_seq"]) for v in desired["vms"] if v["name"] != "a"]
    api.report(node, seen, applied=desired["generation"],
               inv=server_inventory("gpu-server", tmp_path))
    assert api.get(f"/api/v1/instances/{vm_a['id']}").status_code == 404
    with region.sessions() as db:
        assert db.scalar(select(func.count()).select_from(GpuAssignment)) == 1
    assert create(api, "d", gpus=[{"model": "H100", "count": 3}]).status_code == 202


def test_concurrent_creates_never_share_a_gpu(api: Api, region: Region, tmp_path: Path) -> None:
    api.join_node("gpu-1", inv=server_inventory("gpu-server", tmp_path))
    results: list[int] = []

    def one(i: int) -> None:
        results.append(create(api, f"vm-{i}", gpus=[{"model": "H100"}]).status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [202] * 4 + [409] * 2
    with region.sessions() as db:
        held = list(db.scalars(select(GpuAssignment.address)))
        assert len(held) == len(set(held)) == 4
        assert db.scalar(select(func.count()).select_from(Instance)) == 4


def test_bad_gpu_requests_name_the_reason(api: Api, region: Region, tmp_path: Path) -> None:
    api.join_node("ws", inv=server_inventory("workstation", tmp_path))
    api.join_node("old", inv=server_inventory("no-iommu", tmp_path))
    r = create(api, "x", gpus=[{"model": "B200"}])
    assert r.status_code == 422
    assert r.json["detail"] == ("unknown GPU model 'B200'; models in this region: A100 PCIe 80GB, "
                                "GeForce RTX 3090, GeForce RTX 4090")
    r = create(api, "x", gpus=[{"model": "RTX 3090", "count": 2}])
    assert r.status_code == 409 and "ws has 1 RTX 3090 GPUs, 2 asked" in r.json["detail"]
    r = create(api, "x", gpus=[{"model": "A100"}])
    assert r.status_code == 409
    assert "old has 0 of 1 A100 GPUs free, 1 asked (0000:17:00.0 cannot be passed through: " \
           "IOMMU is off" in r.json["detail"]
    r = create(api, "x", gpus=[{"model": "RTX 4090"}])
    assert r.status_code == 409 and "driver ahci): the host needs it" in r.json["detail"]
    r = create(api, "x", gpus=[{"model": "A100"}], vgpu="nvidia-1030")
    assert r.status_code == 422 and "not both" in r.json["detail"]
    r = create(api, "x", gpus=[{"model": "RTX 3090", "count": 0}])
    assert r.status_code == 422
    r = create(api, "x", vgpu="H100XM-10C")
    assert r.status_code == 422
    assert r.json["detail"] == ("unknown vGPU type 'H100XM-10C'; types in this region: none "
                                "(no GPU runs a vGPU host driver)")
    with region.sessions() as db:  # nothing half-made
        assert db.scalar(select(func.count()).select_from(Instance)) == 0
    assert create(api, "ok", gpus=[{"model": "rtx 3090"}]).status_code == 202


def test_vgpus_share_a_gpu_by_type_and_never_a_whole_held_one(api: Api, region: Region,
                                                               tmp_path: Path) -> None:
    node = api.join_node("gpu-1", inv=server_inventory("gpu-server", tmp_path))
    for i in range(5):  # 80C: one per GPU, four GPUs
        r = create(api, f"v{i}", vgpu="H100XM-80C")
        assert r.status_code == (202 if i < 4 else 409), r.json
    assert "has no free H100XM-80C vGPU" in r.json["detail"]
    [d0, *_rest] = api.desired(node)["vms"]
    assert d0["vgpus"][0]["type_id"] == "nvidia-1034"
    listed = api.get("/api/v1/gpus").json
    assert {g["state"] for g in listed} == {"vgpu"}
    r = create(api, "whole", gpus=[{"model": "H100"}])
    assert r.status_code == 409 and "carved into vGPUs" in r.json["detail"]
    with region.sessions() as db:
        parents = sorted(db.scalars(select(VgpuAssignment.parent_address)))
    assert parents == ["0000:18:00.0", "0000:2a:00.0", "0000:ba:00.0", "0000:db:00.0"]


def test_gpu_list_and_node_show_carry_telemetry_and_qualification(api: Api,
                                                                  tmp_path: Path) -> None:
    api.join_node("gpu-1", inv=server_inventory("gpu-server", tmp_path, telemetry=True))
    gpus = api.get("/api/v1/gpus").json
    assert len(gpus) == 4
    first = gpus[0]
    assert (first["node"], first["model"], first["state"], first["driver"]) == (
        "gpu-1", "H100 SXM5 80GB", "free", "nvidia")
    assert first["telemetry"]["utilization_pct"] == 87
    assert first["telemetry"]["xid_events"][0]["xid"] == 79
    assert gpus[1]["telemetry"] is None
    assert [t["id"] for t in first["vgpu_types"]] == ["nvidia-1030", "nvidia-1031", "nvidia-1034"]
    node = api.get("/api/v1/nodes/gpu-1").json
    assert node["inventory"]["qualification"]["verdict"] == "WARN"
    assert node["inventory"]["hardware"]["cpu"]["sockets"] == 2
