"""The GPU driver of a node that hands out no GPUs (the embedded default)."""

from __future__ import annotations

from agent.drivers.gpu.base import GpuDriver, GpuDriverInfo, GpuError
from agent.protocol import DesiredVgpu, NodeGpu

NO_GPUS = "this node's GPU driver is 'none': it hands out no GPUs"


class NoGpuDriver(GpuDriver):
    info = GpuDriverInfo(name="none", passthrough=False, vgpu=False, telemetry=False)

    def discover(self) -> tuple[list[NodeGpu], str]:
        return [], NO_GPUS

    def attach_group(self, owner: str, address: str) -> list[str]:
        raise GpuError(NO_GPUS)

    def release_group(self, address: str) -> None:
        return None

    def held(self) -> dict[str, str]:
        return {}

    def create_vgpu(self, spec: DesiredVgpu) -> None:
        raise GpuError(NO_GPUS)

    def remove_vgpu(self, uuid: str) -> None:
        return None
