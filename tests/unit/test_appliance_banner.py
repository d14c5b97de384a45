"""The console banner's text and when it is rewritten."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
from pathlib import Path

from appliance.banner import State, addresses, publish, render, state
from appliance.firstboot import Paths


def test_addresses_lists_global_ones() -> None:
    out = json.dumps([
        {"ifname": "lo", "addr_info": [{"local": "127.0.0.1", "prefixlen": 8, "scope": "host"}]},
        {"ifname": "vlan42", "addr_info": [
            {"local": "10.0.0.21", "prefixlen": 24, "scope": "global"},
            {"local": "fe80::1", "prefixlen": 64, "scope": "link"}]}])
    assert addresses(lambda argv: (0, out)) == ["vlan42 10.0.0.21/24"]
    assert addresses(lambda argv: (1, "")) == []


def test_render_joined_and_not() -> None:
    joined = render(State("node-1", ["eth0 10.0.0.5/24"], "0.1.0", "node-1 (n-4)", None))
    assert "Vauban node node-1 - version 0.1.0" in joined
    assert "joined as node-1 (n-4)" in joined
    why = render(State("node-1", [], "0.1.0", None, r"bad token C:\x"))
    assert "not joined: bad token C:\\\\x" in why and "none yet" in why


def _paths(tmp_path: Path) -> Paths:
    (tmp_path / "etc/vauban").mkdir(parents=True, exist_ok=True)
    (tmp_path / "etc/vauban/agent.toml").write_text(f'data_dir = "{tmp_path / "data"}"\n')
    return Paths(root=tmp_path, run_dir=tmp_path / "run")


def test_state_says_why_not_joined(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    release = tmp_path / "release.json"
    release.write_text('{"version": "0.1.0"}')
    assert "live mode" in str(state(paths, [], release).why_not)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cmdline").write_text("boot=live vauban.install=auto quiet\n")
    assert state(paths, [], release).why_not == \
        "installing: the installer's messages follow on this console"
    (tmp_path / "proc/cmdline").write_text("boot=live vauban.installer=no\n")  # another word
    assert "live mode" in str(state(paths, [], release).why_not)
    paths.firstboot.write_text("x")
    assert state(paths, [], release).why_not == "joining (first boot in progress)"
    paths.run_dir.mkdir()
    paths.error_file.write_text("join failed: token expired\n")
    assert state(paths, [], release).why_not == "join failed: token expired"
    (tmp_path / "data").mkdir()
    (tmp_path / "data/node.json").write_text(json.dumps(
        {"node_id": "n-9", "name": "node-1", "controller_url": "https://c"}))
    s = state(paths, [], release)
    assert s.joined == "node-1 (n-9)" and s.why_not is None
    assert s.version == importlib.metadata.version("vauban")  # what runs, even upgraded


def test_ssh_host_key_fingerprints_are_shown_as_ssh_keygen_prints_them(tmp_path: Path) -> None:
    ssh = tmp_path / "etc/ssh"
    ssh.mkdir(parents=True)
    for kind in ("ed25519", "ecdsa"):
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f",
                        str(ssh / f"ssh_host_{kind}_key")], check=True)
    shown = render(state(_paths(tmp_path), []))
    for kind in ("ed25519", "ecdsa"):
        printed = subprocess.run(["ssh-keygen", "-l", "-f", str(ssh / f"ssh_host_{kind}_key.pub")],
                                 capture_output=True, text=True, check=True).stdout.split()
        assert f"  ssh key:   {printed[-1].strip('()')} {printed[1]}\n" in shown


def test_publish_writes_only_changes(tmp_path: Path) -> None:
    issue, link = tmp_path / "run/issue.d/vauban.issue", tmp_path / "etc/issue.d/vauban.issue"
    assert publish("a\n", issue, link) is True
    assert publish("a\n", issue, link) is False
    assert publish("b\n", issue, link) is True
    assert link.read_text() == "b\n" and link.is_symlink()
