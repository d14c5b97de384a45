"""The words a listed object's `state` takes, one Literal per kind: the API's wire types
and list filters validate by them, the CLI's help names them (without loading pydantic)."""

from __future__ import annotations

from typing import Literal

NodeState = Literal["up", "down", "new"]
# controller.services.instances.display_state
InstanceState = Literal["creating", "provisioning", "running", "stopped", "starting",
                        "stopping", "rebooting", "migrating", "deleting", "error", "unknown"]
# controller.services.volumes.display_state
VolumeState = Literal["creating", "available", "in-use", "attaching", "detaching",
                      "resizing", "snapshotting", "rolling-back", "deleting", "error"]
OperationState = Literal["pending", "running", "succeeded", "failed"]
GpuState = Literal["free", "in-use", "vgpu", "unusable"]
RolloutState = Literal["pending", "running", "succeeded", "failed"]
