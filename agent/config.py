"""Agent settings and the files it keeps in its data directory."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from agent.protocol import RENEW_FRACTION


@dataclass(frozen=True)
class AgentConfig:
    data_dir: Path
    hypervisor: str = "libvirt"
    libvirt_uri: str = "qemu:///system"
    network: str = "linux"
    # least time between status reports; the controller names a longer one in large regions
    # (its long-polls prove the agent alive meanwhile), and every change is sent at once
    heartbeat_s: float = 5.0
    # long-poll length until the controller names its own; it answers early on change
    poll_wait_s: float = 25.0
    stop_grace_s: float = 60.0  # ACPI shutdown before a VM is forced off
    kvm_probe_timeout_s: float = 10.0
    gpu: str = "auto"  # "auto": "nvidia" when the PCI bus shows an NVIDIA GPU, else "none"
    hardware_profile: str = "compute"  # the qualification profile the node is checked against
    hardware_refresh_s: float = 300.0  # disks, NICs and PCI change rarely; GPUs every report
    # the node certificate is renewed once less than this part of its lifetime is left
    cert_renew_fraction: float = RENEW_FRACTION
    # Prometheus metrics (agent/metrics.py, docs/metrics.md): off unless an address is set;
    # mutual TLS with the region CA, plain HTTP only on a loopback address with tls off
    metrics_address: str | None = None
    metrics_port: int = 9475
    metrics_tls: bool = True
    # libvirtd's and QEMU's TLS material from the region CA, and libvirtd's TLS listener
    # (agent/hypervisor_tls.py): on for nodes (the rollout turns it on), off by default so
    # an agent run anywhere else never writes /etc/pki nor restarts libvirtd
    hypervisor_tls: bool = False
    pki_root: Path = Path("/")  # where etc/pki is: "/" on a node, a folder in tests

    @property
    def node_file(self) -> Path:
        return self.data_dir / "node.json"

    @property
    def key_path(self) -> Path:
        return self.data_dir / "node.key"

    @property
    def cert_path(self) -> Path:
        return self.data_dir / "node.pem"

    @property
    def ca_path(self) -> Path:
        return self.data_dir / "ca.pem"

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "storage"

    @property
    def instances_dir(self) -> Path:
        return self.data_dir / "instances"

    @property
    def gpu_records(self) -> Path:
        return self.data_dir / "gpu"

    @property
    def kvm_probe_cache(self) -> Path:
        return self.data_dir / "kvm-probe.json"


@dataclass(frozen=True)
class NodeIdentity:
    """Who this node is in the region, saved at join time."""

    node_id: str
    name: str
    controller_url: str

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> NodeIdentity:
        data = json.loads(path.read_text())
        return cls(node_id=data["node_id"], name=data["name"],
                   controller_url=data["controller_url"])
