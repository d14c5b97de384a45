"""The agent's settings file (`/etc/vauban/agent.toml`): what the playbooks and the ISO
write, read strictly. Flags given on the command line win over the file.

    data_dir = "/var/lib/vauban/agent"
    heartbeat_s = 5.0
    gpu = "auto"
    hardware_profile = "compute"
    cert_renew_fraction = 0.333  # renew the node certificate at a third of its life left
    metrics_address = "10.0.0.5"  # serve Prometheus metrics there (off when unset)
    metrics_port = 9475
    metrics_tls = true  # false: plain HTTP, accepted on a loopback address only
    hypervisor_tls = true  # libvirtd/QEMU TLS from the region CA (migrations)

An unknown key, a value of the wrong type (`heartbeat_s = "5"`) or out of range is
refused with the key's name, so a typo never silently leaves a default in force.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.config import AgentConfig
from agent.metrics import is_loopback

DEFAULT_PATH = Path("/etc/vauban/agent.toml")


class SettingsFileError(Exception):
    """The settings file cannot be used; the message names the file and the key."""


class AgentSettingsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    data_dir: str | None = None
    # "xapi": this agent manages an XCP-ng pool over XAPI (it runs beside the pool, not in it)
    hypervisor: Literal["libvirt", "xapi"] | None = None
    libvirt_uri: str | None = Field(None, min_length=1, max_length=200)
    network: Literal["linux"] | None = None
    heartbeat_s: float | None = Field(None, ge=1.0, le=3600.0)
    poll_wait_s: float | None = Field(None, ge=1.0, le=3600.0)
    stop_grace_s: float | None = Field(None, ge=0.0, le=3600.0)
    kvm_probe_timeout_s: float | None = Field(None, ge=1.0, le=600.0)
    gpu: Literal["auto", "none", "nvidia"] | None = None
    hardware_profile: str | None = Field(None, min_length=1, max_length=200)
    hardware_refresh_s: float | None = Field(None, ge=10.0, le=86400.0)
    cert_renew_fraction: float | None = Field(None, ge=0.05, le=0.9)
    metrics_address: str | None = Field(None, min_length=1, max_length=255)
    metrics_port: int | None = Field(None, ge=1, le=65535)
    metrics_tls: bool | None = None
    hypervisor_tls: bool | None = None

    @model_validator(mode="after")
    def _plain_http_on_loopback_only(self) -> AgentSettingsFile:
        if self.metrics_tls is False and self.metrics_address is not None \
                and not is_loopback(self.metrics_address):
            raise ValueError(f"metrics_tls = false on {self.metrics_address}: plain HTTP "
                             "is served on a loopback address only")
        return self


def read_settings(path: Path) -> dict[str, Any]:
    """The settings the file sets (keys of AgentConfig); {} for a file that does not
    exist. SettingsFileError for one that cannot be read or does not validate."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise SettingsFileError(f"{path}: {e}") from e
    try:
        settings = AgentSettingsFile.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                             for err in e.errors())
        raise SettingsFileError(f"{path}: {problems}") from e
    return settings.model_dump(exclude_none=True)


def agent_config(path: Path, overrides: dict[str, Any]) -> AgentConfig:
    """AgentConfig from the file, then the flags given (`overrides`, None = not given)."""
    values = read_settings(path)
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["data_dir"] = Path(values.get("data_dir", "var/agent")).resolve()
    return AgentConfig(**values)
