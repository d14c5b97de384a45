"""The agent role's agent.toml: the metrics listener's variables reach the agent's
settings file, with the agent's own defaults, and what it renders the agent reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

from agent.config import AgentConfig
from agent.settings_file import SettingsFileError, agent_config

ROLE = Path(__file__).resolve().parents[2] / "playbooks" / "roles" / "agent"


def render(tmp_path: Path, **group_vars: Any) -> Path:
    """agent.toml as the role writes it for a host with `group_vars` over the role's
    defaults; the file's path."""
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    variables = {**defaults, "inventory_hostname": "n1", "ansible_host": "10.0.0.5",
                 "ansible_managed": "managed by the rollout", **group_vars}
    # Ansible trusts what its variable files hold as templates, as it does here
    trusted = {k: trust_as_template(v) if isinstance(v, str) else v
               for k, v in variables.items()}
    templar = Templar(loader=DataLoader(), variables=trusted)
    source = (ROLE / "templates" / "agent.toml.j2").read_text()
    path = tmp_path / "agent.toml"
    path.write_text(str(templar.template(trust_as_template(source))))
    return path


def test_by_default_the_listener_is_off_with_the_agents_defaults(tmp_path: Path) -> None:
    config = agent_config(render(tmp_path), {})
    default = AgentConfig(data_dir=Path("/"))
    assert config.metrics_address is None
    assert (config.metrics_port, config.metrics_tls) == (default.metrics_port,
                                                         default.metrics_tls)
    assert config.data_dir == Path("/var/lib/vauban/agent")


def test_group_vars_turn_the_listener_on(tmp_path: Path) -> None:
    path = render(tmp_path, agent_metrics_address="{{ ansible_host }}",
                  agent_metrics_port=9600)
    config = agent_config(path, {})
    assert (config.metrics_address, config.metrics_port, config.metrics_tls) == (
        "10.0.0.5", 9600, True)


def test_plain_http_on_loopback(tmp_path: Path) -> None:
    config = agent_config(render(tmp_path, agent_metrics_address="127.0.0.1",
                                 agent_metrics_tls=False), {})
    assert (config.metrics_address, config.metrics_tls) == ("127.0.0.1", False)


def test_agent_settings_still_win_and_no_key_is_written_twice(tmp_path: Path) -> None:
    path = render(tmp_path, agent_metrics_port=9600, agent_settings={"metrics_port": 9700,
                                                                     "gpu": "none"})
    lines = [line.split(" = ")[0] for line in path.read_text().splitlines()
             if " = " in line]
    assert len(lines) == len(set(lines)), lines
    config = agent_config(path, {})
    assert (config.metrics_port, config.gpu) == (9700, "none")


def test_plain_http_off_loopback_is_refused_by_the_agent(tmp_path: Path) -> None:
    path = render(tmp_path, agent_metrics_address="10.0.0.5", agent_metrics_tls=False)
    with pytest.raises(SettingsFileError, match="loopback"):
        agent_config(path, {})
