"""The agent's settings file is read strictly, and flags win over it."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.main import main
from agent.settings_file import SettingsFileError, agent_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_the_file_sets_the_agent_and_flags_win(tmp_path: Path) -> None:
    path = write(tmp_path, f'data_dir = "{tmp_path}/state"\nheartbeat_s = 7\n'
                           'gpu = "none"\nhardware_profile = "gpu"\n')
    config = agent_config(path, {"data_dir": None, "gpu": None, "hardware_profile": "compute"})
    assert (config.data_dir, config.heartbeat_s, config.gpu, config.hardware_profile) == \
        (tmp_path / "state", 7.0, "none", "compute")


def test_no_file_means_the_defaults(tmp_path: Path) -> None:
    config = agent_config(tmp_path / "absent.toml", {"data_dir": str(tmp_path)})
    assert (config.data_dir, config.heartbeat_s, config.gpu) == (tmp_path, 5.0, "auto")
    assert config.cert_renew_fraction == 1 / 3


def test_the_file_sets_when_the_node_certificate_is_renewed(tmp_path: Path) -> None:
    path = write(tmp_path, "cert_renew_fraction = 0.5\n")
    assert agent_config(path, {"data_dir": str(tmp_path)}).cert_renew_fraction == 0.5


@pytest.mark.parametrize("text, says", [
    ('heartbeat = 5.0\n', "heartbeat: Extra inputs are not permitted"),
    ('heartbeat_s = "5"\n', "heartbeat_s: Input should be a valid number"),
    ('heartbeat_s = 0.1\n', "heartbeat_s: Input should be greater than or equal to 1"),
    ('gpu = "amd"\n', "gpu: Input should be 'auto', 'none' or 'nvidia'"),
    ('data_dir = \n', "Invalid value"),
    ('cert_renew_fraction = 0.95\n', "cert_renew_fraction: Input should be less than or equal "
                                     "to 0.9"),
])
def test_a_bad_file_is_refused_naming_the_key(tmp_path: Path, text: str, says: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SettingsFileError, match=says) as e:
        agent_config(path, {})
    assert str(path) in str(e.value)


def test_the_agent_refuses_to_start_on_a_bad_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "hartbeat_s = 5\n")
    assert main(["--config", str(path), "run"]) == 2
    err = capsys.readouterr().err
    assert "settings file refused" in err and "hartbeat_s" in err


def test_join_reads_its_token_from_a_file_and_refuses_an_empty_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = tmp_path / "token"
    token.write_text("")
    argv = ["--config", str(tmp_path / "none.toml"), "--data-dir", str(tmp_path / "agent"),
            "join", "--controller", "https://127.0.0.1:9", "--ca-sha256", "ab" * 32,
            "--name", "n1", "--token-file", str(token)]
    assert main(argv) == 1
    assert f"the join token file {token} is empty" in capsys.readouterr().err
    token.write_text("s3cret\n")
    assert main(argv) == 1  # read, then the controller (nobody on port 9) is not reached
    err = capsys.readouterr().err
    assert "join failed" in err and "empty" not in err and "s3cret" not in err
