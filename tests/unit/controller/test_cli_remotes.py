"""Named remotes kept under XDG_CONFIG_HOME, `--remote`, `vauban --version` and the shell
completion scripts generated from the parser. No API is reached: the commands here need
none, and the login's request is replaced."""

from __future__ import annotations

import argparse
import json
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from controller import __version__
from controller.cli import main as cli
from controller.cli.client import Settings
from controller.cli.remotes import Store, config_file


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh XDG_CONFIG_HOME, and none of the environment that would override it."""
    for name in ("VAUBAN_CONFIG", "VAUBAN_URL", "VAUBAN_TOKEN", "VAUBAN_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config"


def test_remotes_are_kept_under_xdg_config_home_readable_by_their_owner_only(
        xdg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["remote", "add", "paris", "https://paris.example:8443"]) == 0
    assert cli.main(["remote", "add", "lyon", "https://lyon.example:8443",
                     "--ca-file", "lyon-ca.pem"]) == 0
    path = xdg / "vauban" / "cli.json"
    assert config_file() == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    store = Store.load()
    assert store.current == "paris"  # the first one added
    assert store.remotes["lyon"].ca_file == str(Path("lyon-ca.pem").absolute())
    assert Settings.load().url == "https://paris.example:8443"
    assert cli.main(["remote", "switch", "lyon"]) == 0
    assert Settings.load().url == "https://lyon.example:8443"
    assert Settings.load("paris").url == "https://paris.example:8443"
    capsys.readouterr()
    assert cli.main(["remote", "list", "-o", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["current"], r["logged_in"]) for r in listed] == \
        [("lyon", True, False), ("paris", False, False)]
    assert cli.main(["remote", "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["NAME", "URL", "CURRENT"]
    assert table[1].split()[:3] == ["lyon", "https://lyon.example:8443", "*"]
    assert cli.main(["remote", "remove", "lyon"]) == 0
    assert set(Store.load().remotes) == {"paris"} and Store.load().current is None


def test_a_remote_added_twice_or_unknown_is_refused(
        xdg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["remote", "add", "paris", "https://paris.example:8443"]) == 0
    assert cli.main(["remote", "add", "paris", "https://other.example"]) == 1
    assert "exists already" in capsys.readouterr().err
    assert Store.load().remotes["paris"].url == "https://paris.example:8443"
    assert cli.main(["remote", "switch", "rome"]) == 1
    assert "no remote named 'rome' (known: paris)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # --remote: a usage error, nothing sent
        cli.main(["--remote", "rome", "vm", "list"])
    assert exit_.value.code == 2
    assert "no remote named 'rome' (known: paris)" in capsys.readouterr().err


def test_the_environment_wins_over_the_remote(xdg: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.main(["remote", "add", "paris", "https://paris.example:8443",
                     "--ca-file", "/ca.pem"]) == 0
    monkeypatch.setenv("VAUBAN_URL", "https://env.example")
    monkeypatch.setenv("VAUBAN_TOKEN", "vbt_env")
    s = Settings.load("paris")
    assert (s.url, s.token, s.ca_file) == ("https://env.example", "vbt_env", "/ca.pem")


def test_the_single_login_of_older_versions_reads_as_the_remote_default(
        xdg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = xdg / "vauban" / "cli.json"
    old.parent.mkdir(parents=True)
    old.write_text(json.dumps({"url": "https://old.example", "token": "vbt_old",
                               "ca_file": None}))
    s = Settings.load()
    assert (s.url, s.token) == ("https://old.example", "vbt_old")
    assert Store.load().current == "default"
    legacy = xdg / "legacy.json"  # VAUBAN_CONFIG still names the file
    legacy.write_text("{}")
    monkeypatch.setenv("VAUBAN_CONFIG", str(legacy))
    assert Store.load().remotes == {} and Settings.load().url == "https://127.0.0.1:8443"


def test_login_keeps_the_token_in_the_remote_named(
        xdg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    tokens = iter(["vbt_one", "vbt_two"])
    seen: list[str] = []

    def log_in(client: Any, _a: argparse.Namespace, _password: str) -> dict[str, str]:
        seen.append(client.settings.url)
        return {"token": next(tokens), "expires_at": "later"}

    monkeypatch.setattr(cli, "log_in", log_in)
    password = tmp_path / "password"
    password.write_text("secret\n")
    assert cli.main(["remote", "add", "paris", "https://paris.example:8443"]) == 0
    assert cli.main(["remote", "add", "lyon", "https://lyon.example:8443"]) == 0
    assert cli.main(["login", "--password-file", str(password)]) == 0
    assert cli.main(["--remote", "lyon", "login", "--password-file", str(password)]) == 0
    assert seen == ["https://paris.example:8443", "https://lyon.example:8443"]
    store = Store.load()
    assert (store.remotes["paris"].token, store.remotes["lyon"].token) == ("vbt_one",
                                                                           "vbt_two")
    assert store.current == "paris"
    assert Settings.load("lyon").token == "vbt_two"
    assert stat.S_IMODE(config_file().stat().st_mode) == 0o600


def test_version_is_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"vauban {cli.package_version()}"
    assert cli.package_version() == __version__  # pyproject's and the source's agree


def _completion(shell: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(["completion", shell]) == 0
    return capsys.readouterr().out


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion_is_valid_and_offers_the_vm_commands(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "vauban.bash"
    script.write_text(_completion("bash", capsys))
    subprocess.run(["bash", "-n", str(script)], check=True)
    # what bash does on `vauban vm <TAB>`: the function `complete -F` names, words set
    words = ["vauban", "vm", ""]
    probe = (f"source {script}\n"
             "fn=$(complete -p vauban | sed -E 's/.* -F ([^ ]+) .*/\\1/')\n"
             "COMP_WORDS=(vauban vm ''); COMP_CWORD=2; COMP_LINE='vauban vm '; "
             "COMP_POINT=${#COMP_LINE}\n"
             f"$fn vauban '' {words[1]}\n"
             "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    out = subprocess.run(["bash", "-c", probe], check=True, capture_output=True, text=True)
    offered = set(out.stdout.split())
    assert {"create", "list", "show", "start", "stop", "reboot", "delete", "console"} <= offered
    assert "login" not in offered  # the vm group's commands only


def test_zsh_completion_is_generated_from_the_parser(
        capsys: pytest.CaptureFixture[str]) -> None:
    script = _completion("zsh", capsys)
    assert script.startswith("#compdef vauban")
    assert "security-group" in script and "--no-wait" in script
    if shutil.which("zsh"):
        subprocess.run(["zsh", "-n", "-c", script], check=True)


def test_a_damaged_remotes_file_is_named_not_a_traceback(
        xdg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = xdg / "vauban" / "cli.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["remote", "list"])
    assert exit_.value.code == 2
    assert f"{path} is not the CLI's saved remotes" in capsys.readouterr().err
    assert path.read_text() == "{not json"  # left for the user to mend
