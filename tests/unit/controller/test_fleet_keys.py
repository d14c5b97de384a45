"""The fleet SSH key and host key parsing, checked against OpenSSH's own ssh-keygen."""

from __future__ import annotations

import base64
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from controller import secretbox
from controller.fleet.keys import (
    HostKeyError,
    ensure_fleet_key,
    fingerprint,
    fleet_key_path,
    fleet_private_key,
    fleet_sealed_key_path,
    known_hosts_line,
    normalize_fingerprint,
    parse_public_key,
)
from controller.secretbox import ensure_region_key


def _keygen(tmp_path: Path, kind: str, *args: str) -> str:
    """A public key line made by ssh-keygen (type `kind`) in tmp_path."""
    path = tmp_path / f"key-{kind}"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, *args, "-N", "", "-C", "someone@somewhere",
                    "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


def _ssh_keygen_fingerprint(public: Path) -> str:
    """The SHA256:... field of what `ssh-keygen -lf` prints."""
    out = subprocess.run(["ssh-keygen", "-E", "sha256", "-lf", str(public)], check=True,
                         capture_output=True, text=True).stdout
    return out.split()[1]


@pytest.mark.parametrize(("kind", "args"), [("ed25519", ()), ("ecdsa", ("-b", "384")),
                                            ("rsa", ("-b", "2048"))])
def test_fingerprint_is_what_ssh_keygen_prints(tmp_path: Path, kind: str,
                                               args: tuple[str, ...]) -> None:
    line = _keygen(tmp_path, kind, *args)
    key_type, blob = parse_public_key(line)
    assert key_type == line.split()[0]
    assert blob == base64.b64decode(line.split()[1])
    assert fingerprint(blob) == _ssh_keygen_fingerprint(tmp_path / f"key-{kind}.pub")


def test_parse_refuses_unknown_types_damaged_base64_and_a_blob_of_another_type(
        tmp_path: Path) -> None:
    ed = _keygen(tmp_path, "ed25519")
    data = ed.split()[1]
    with pytest.raises(HostKeyError, match="not an SSH public key of a known type"):
        parse_public_key(f"ssh-dss {data}")
    with pytest.raises(HostKeyError, match="known type"):
        parse_public_key("ssh-ed25519")  # no data at all
    with pytest.raises(HostKeyError, match="known type"):
        parse_public_key("")
    with pytest.raises(HostKeyError, match="base64 is damaged"):
        parse_public_key(f"ssh-ed25519 {data[:-3]}*{data[-2:]}")
    with pytest.raises(HostKeyError, match="base64 is damaged"):
        parse_public_key(f"ssh-ed25519 {data[:-1]}")  # cut short: padding is wrong
    with pytest.raises(HostKeyError, match="not a ssh-rsa key"):
        parse_public_key(f"ssh-rsa {data}")  # an ed25519 blob pasted under another type
    with pytest.raises(HostKeyError, match="not a ssh-ed25519 key"):
        parse_public_key("ssh-ed25519 AAA=")  # shorter than its own length field
    # the comment is no part of the key
    assert parse_public_key(ed) == parse_public_key(" ".join(ed.split()[:2]))


def test_normalize_fingerprint_accepts_both_forms_and_refuses_others(tmp_path: Path) -> None:
    _keygen(tmp_path, "ed25519")
    printed = _ssh_keygen_fingerprint(tmp_path / "key-ed25519.pub")
    bare = printed.removeprefix("SHA256:")
    assert len(bare) == 43
    assert normalize_fingerprint(printed) == printed
    assert normalize_fingerprint(f"  {bare}\n") == printed
    assert normalize_fingerprint(bare + "=") == printed  # padded, as some tools print it
    md5 = subprocess.run(["ssh-keygen", "-E", "md5", "-lf", str(tmp_path / "key-ed25519.pub")],
                         check=True, capture_output=True, text=True).stdout.split()[1]
    for bad in (md5, md5.removeprefix("MD5:"), bare[:-4], bare + "AAAA", "SHA256:", "",
                "SHA256:" + "*" * 43, "sha256:" + bare, "SHA256:" + "\u6771" * 43):
        with pytest.raises(HostKeyError, match="'SHA256:' and 43 base64 characters"):
            normalize_fingerprint(bad)


def test_known_hosts_line_on_port_22_and_another(tmp_path: Path) -> None:
    line = _keygen(tmp_path, "ed25519")
    key_type, data = line.split()[:2]
    assert known_hosts_line("10.0.0.21", 22, line) == f"10.0.0.21 {key_type} {data}"
    assert known_hosts_line("node-1.example", 2222, line) == \
        f"[node-1.example]:2222 {key_type} {data}"
    # OpenSSH finds the key under that name in a file of such lines
    known = tmp_path / "known_hosts"
    known.write_text(known_hosts_line("node-1.example", 2222, line) + "\n")
    found = subprocess.run(["ssh-keygen", "-F", "[node-1.example]:2222", "-f", str(known)],
                           capture_output=True, text=True)
    assert found.returncode == 0 and data in found.stdout
    with pytest.raises(HostKeyError):
        known_hosts_line("10.0.0.21", 22, "not a key")


def _derived_public(tmp_path: Path, pem: str) -> list[str]:
    """ssh-keygen's public line of the private key `pem` (written 0600 under tmp_path)."""
    path = tmp_path / "opened"
    path.write_text(pem)
    path.chmod(0o600)
    try:
        return subprocess.run(["ssh-keygen", "-y", "-f", str(path)], check=True,
                              capture_output=True, text=True).stdout.split()
    finally:
        path.unlink()


def test_ensure_fleet_key_makes_a_sealed_private_key_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "controller"
    line = ensure_fleet_key(data_dir)
    sealed = fleet_sealed_key_path(data_dir)
    assert stat.S_IMODE(sealed.stat().st_mode) == 0o600
    assert stat.S_IMODE(sealed.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(secretbox.region_key_path(data_dir).stat().st_mode) == 0o600
    assert line.startswith("ssh-ed25519 AAAA") and line.endswith(" vauban-fleet")
    pem = fleet_private_key(data_dir)
    assert "PRIVATE KEY" not in sealed.read_text() and pem not in sealed.read_text()
    assert _derived_public(tmp_path, pem)[:2] == line.split()[:2]
    assert not list(sealed.parent.glob("*.tmp"))
    assert ensure_fleet_key(data_dir) == line
    assert sorted(p.name for p in sealed.parent.iterdir()) == ["id_ed25519.pub",
                                                               "id_ed25519.sealed"]


def test_a_plaintext_fleet_key_is_sealed_then_removed(tmp_path: Path) -> None:
    data_dir = tmp_path / "controller"
    plain = fleet_key_path(data_dir)
    plain.parent.mkdir(parents=True, mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "old",
                    "-f", str(plain)], check=True)
    old_pem, old_public = plain.read_text(), plain.with_suffix(".pub").read_text().split()
    line = ensure_fleet_key(data_dir)
    assert not plain.exists()
    assert line.split()[:2] == old_public[:2]  # the key servers trust is kept
    assert fleet_private_key(data_dir) == old_pem
    assert old_pem not in fleet_sealed_key_path(data_dir).read_text()


def test_a_sealed_fleet_key_of_another_region_key_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "controller"
    ensure_fleet_key(data_dir)
    secretbox.region_key_path(data_dir).unlink()
    with pytest.raises(secretbox.SecretRefused, match="sealed with another region key"):
        ensure_fleet_key(data_dir)


def test_callers_racing_to_make_the_fleet_key_all_get_the_one_sealed_first(
        tmp_path: Path) -> None:
    data_dir = tmp_path / "controller"
    ensure_region_key(data_dir)
    with ThreadPoolExecutor(8) as pool:
        lines = set(pool.map(lambda _: ensure_fleet_key(data_dir), range(16)))
    assert lines == {ensure_fleet_key(data_dir)}
    assert sorted(p.name for p in fleet_sealed_key_path(data_dir).parent.iterdir()) == [
        "id_ed25519.pub", "id_ed25519.sealed"]
