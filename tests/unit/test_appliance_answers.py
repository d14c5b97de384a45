"""The installer's answers: command line, answer file, their merge, every refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.answers import (
    Answers,
    AnswersError,
    gather,
    merge,
    parse_cmdline,
    parse_file,
)
from appliance.cmd import CommandError

CA = "0123456789abcdef" * 4
BASE = {"controller": "https://10.0.0.1:8443", "join_token": "tok-abcdefgh",
        "ca_sha256": CA, "hostname": "node-1"}


@pytest.fixture
def zoneinfo(tmp_path: Path) -> Path:
    (tmp_path / "Europe").mkdir()
    (tmp_path / "Europe/Paris").write_bytes(b"TZif")
    (tmp_path / "UTC").write_bytes(b"TZif")
    return tmp_path


def problems(cmdline: dict[str, str], data: dict[str, object] | None, zoneinfo: Path) -> list[str]:
    with pytest.raises(AnswersError) as e:
        merge(cmdline, data, zoneinfo)
    return e.value.problems


def test_file_alone_with_defaults(zoneinfo: Path) -> None:
    a = merge({}, dict(BASE), zoneinfo)
    assert a.disk == "auto" and a.wipe is False and a.network.mode == "dhcp"
    assert a.network.interface == "auto" and a.timezone == "UTC"
    assert a.hardware_profile == "compute" and a.root_ssh_keys == []


def test_cmdline_alone_with_typed_values(zoneinfo: Path) -> None:
    text = ("BOOT_IMAGE=/live/vmlinuz boot=live vauban.install=auto "
            f"vauban.controller=https://c.example:8443/ vauban.join_token=tok-abcdefgh "
            f"vauban.ca_sha256={CA.upper()} vauban.hostname=node-2 vauban.wipe=yes "
            "vauban.network.mode=static vauban.network.address=10.1.0.5/24 "
            "vauban.network.gateway=10.1.0.1 vauban.network.dns=10.1.0.53,10.1.0.54 "
            "vauban.network.vlan=42 vauban.timezone=Europe/Paris "
            "'vauban.root_ssh_keys=ssh-ed25519 AAAAC3Nza admin@x'")
    keys, control = parse_cmdline(text)
    assert control == {"install": "auto"}
    a = merge(keys, None, zoneinfo)
    assert a.controller == "https://c.example:8443" and a.ca_sha256 == CA and a.wipe is True
    assert a.network.vlan == 42 and a.network.dns == ["10.1.0.53", "10.1.0.54"]
    assert a.root_ssh_keys == ["ssh-ed25519 AAAAC3Nza admin@x"]


def test_same_value_from_both_is_no_contradiction(zoneinfo: Path) -> None:
    a = merge({"hostname": "node-1", "wipe": "false", "network.vlan": "7"},
              {**BASE, "wipe": False, "network": {"vlan": 7}}, zoneinfo)
    assert a.hostname == "node-1" and a.network.vlan == 7


def test_contradictions_are_all_named(zoneinfo: Path) -> None:
    found = problems({"hostname": "other", "network.mode": "static", "wipe": "true"},
                     {**BASE, "wipe": False, "network": {"mode": "dhcp"}}, zoneinfo)
    assert len([p for p in found if "contradiction" in p]) == 3
    assert any(p.startswith("hostname: contradiction") and "'other'" in p for p in found)


def test_a_contradicting_token_is_not_printed(zoneinfo: Path) -> None:
    found = problems({"join_token": "tok-from-cmdline"}, dict(BASE), zoneinfo)
    assert found == ["join_token: contradiction: the kernel command line and the answer file "
                     "give different values (not shown: a secret)"]


def test_missing_required_answers_are_listed(zoneinfo: Path) -> None:
    found = problems({}, {"hostname": "node-1"}, zoneinfo)
    assert sorted(found) == ["ca_sha256: missing (required)", "controller: missing (required)",
                             "join_token: missing (required)"]


@pytest.mark.parametrize(("key", "value", "words"), [
    ("controller", "http://10.0.0.1:8443", "https"),
    ("controller", "10.0.0.1", "https"),
    ("join_token", "short", "at least 8"),
    ("join_token", "tok with space", "white space"),
    ("ca_sha256", "ab" * 31, "pattern"),
    ("hostname", "Node_1", "host name"),
    ("hostname", "-node", "host name"),
    ("disk", "sda", "disk rule"),
    ("disk", "size>=lots", "disk rule"),
    ("wipe", "maybe", "true or false"),
    ("timezone", "Mars/Olympus", "time zone"),
    ("timezone", "../etc/passwd", "time zone"),
    ("hardware_profile", "supercomputer", "hardware profile"),
    ("root_ssh_keys", "not-a-key", "SSH public keys"),
    ("ntp_servers", "pool ntp org", "host names"),
    ("network.mode", "bootp", "dhcp"),
    ("network.interface", "mac:zz", "interface"),
    ("network.vlan", "0", "greater than or equal to 1"),
    ("network.vlan", "4095", "less than or equal to 4094"),
    ("network.vlan", "ten", "whole number"),
    ("network.dns", "10.0.0.300", "not IP addresses"),
    ("metrics_address", "node-1.example", "not an IP address"),
    ("metrics_port", "0", "greater than or equal to 1"),
    ("metrics_port", "65536", "less than or equal to 65535"),
    ("metrics_tls", "maybe", "true or false"),
])
def test_every_bad_value_is_refused(zoneinfo: Path, key: str, value: str, words: str) -> None:
    found = problems({key: value}, {k: v for k, v in BASE.items() if k != key}, zoneinfo)
    assert any(p.startswith(f"{key}") and words in p for p in found), found


def test_the_metrics_listener_from_the_cmdline(zoneinfo: Path) -> None:
    a = merge({"metrics_address": "127.0.0.1", "metrics_port": "9600", "metrics_tls": "no"},
              dict(BASE), zoneinfo)
    assert a.agent_settings() == {"hardware_profile": "compute", "metrics_address":
                                  "127.0.0.1", "metrics_port": 9600, "metrics_tls": False}
    assert merge({}, dict(BASE), zoneinfo).agent_settings() == {"hardware_profile": "compute"}


@pytest.mark.parametrize(("given", "words"), [
    ({"metrics_address": "10.0.0.5", "metrics_tls": False}, "loopback address only"),
    ({"metrics_port": 9600}, "need metrics_address"),
])
def test_metrics_listener_rules(zoneinfo: Path, given: dict[str, object], words: str) -> None:
    found = problems({}, {**BASE, **given}, zoneinfo)
    assert any(words in p for p in found), found


@pytest.mark.parametrize(("network", "words"), [
    ({"mode": "static"}, "needs an address"),
    ({"mode": "static", "address": "10.0.0.5"}, "prefix length"),
    ({"mode": "static", "address": "10.0.0.0/24"}, "network's own address"),
    ({"mode": "static", "address": "10.0.0.5/24", "gateway": "10.9.0.1"}, "not in 10.0.0.0/24"),
    ({"mode": "dhcp", "address": "10.0.0.5/24"}, "for mode static"),
    ({"mode": "dhcp", "mtu": 9000}, "unknown key"),
])
def test_network_rules(zoneinfo: Path, network: dict[str, object], words: str) -> None:
    found = problems({}, {**BASE, "network": network}, zoneinfo)
    assert any(words in p for p in found), found


def test_file_values_of_the_wrong_type_are_refused_strictly(zoneinfo: Path) -> None:
    found = problems({}, {**BASE, "wipe": "true", "network": {"vlan": "5"}, "colour": 1},
                     zoneinfo)
    assert any(p.startswith("wipe:") for p in found)
    assert any(p.startswith("network.vlan:") for p in found)
    assert "colour: unknown key" in found


def test_bad_toml_is_refused() -> None:
    with pytest.raises(AnswersError, match="not valid TOML"):
        parse_file("controller = ", "answers.toml")


def test_gather_reads_the_named_file_and_the_cmdline(tmp_path: Path, zoneinfo: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text("".join(f'{k} = "{v}"\n' for k, v in BASE.items()))

    def no_label(argv: object, *, input_text: str | None = None) -> str:
        raise AssertionError("looked for a VAUBAN medium although a file was named")

    mode, a = gather(f"vauban.install=interactive vauban.answers={path} vauban.disk=size>=100G",
                     no_label, zoneinfo)
    assert mode == "interactive" and isinstance(a, Answers) and a.disk == "size>=100G"


def test_gather_without_any_answer_gives_none(zoneinfo: Path) -> None:
    def no_label(argv: object, *, input_text: str | None = None) -> str:
        raise CommandError(["blkid"], 2, "")

    assert gather("boot=live vauban.install=auto", no_label, zoneinfo) == ("auto", None)


def test_gather_reads_the_labelled_medium(tmp_path: Path, zoneinfo: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    text = "".join(f'{k} = "{v}"\n' for k, v in BASE.items())

    def fake(argv: list[str], *, input_text: str | None = None) -> str:
        calls.append(list(argv))
        if argv[0] == "blkid":
            return "/dev/sdb1\n"
        if argv[0] == "mount":
            (Path(argv[-1]) / "vauban-answers.toml").write_text(text)
        if argv[0] == "umount":
            (Path(argv[-1]) / "vauban-answers.toml").unlink()
        return ""

    monkeypatch.setattr("appliance.answers.tempfile.mkdtemp",
                        lambda prefix, dir: str(tmp_path / "mnt") if (tmp_path / "mnt").mkdir()
                        is None else "")
    _mode, a = gather("vauban.install=auto", fake, zoneinfo)
    assert a is not None and a.hostname == "node-1"
    assert calls[1][:3] == ["mount", "-o", "ro"] and calls[2][0] == "umount"
    assert not (tmp_path / "mnt").exists()
