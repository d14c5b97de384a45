"""The region key and sealed secrets: what opens, and what is refused and why."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from controller.secretbox import (
    KEY_BYTES,
    RegionKey,
    RegionKeyError,
    SecretRefused,
    ensure_region_key,
    load_region_key,
    region_key_path,
)


def test_the_key_is_made_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "controller"
    box = ensure_region_key(data_dir)
    path = region_key_path(data_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == KEY_BYTES
    again = ensure_region_key(data_dir)
    assert again.key_id == box.key_id
    assert again.open("fleet-ssh-key", box.seal("fleet-ssh-key", b"x")) == b"x"
    assert sorted(p.name for p in data_dir.iterdir()) == ["region.key"]
    assert box.key_id in repr(box) and path.read_bytes().hex() not in repr(box)


def test_a_secret_opens_for_its_purpose(tmp_path: Path) -> None:
    box = ensure_region_key(tmp_path)
    secret = os.urandom(200)
    sealed = box.seal("totp-seed/user-1", secret)
    assert sealed.startswith(f"vauban-secret:1:{box.key_id}:totp-seed/user-1:")
    assert "\n" not in sealed and secret.hex() not in sealed
    assert box.open("totp-seed/user-1", sealed) == secret
    assert box.seal("totp-seed/user-1", secret) != sealed  # a fresh nonce each time


def test_a_secret_is_refused_for_another_purpose(tmp_path: Path) -> None:
    box = ensure_region_key(tmp_path)
    sealed = box.seal("totp-seed/user-1", b"seed")
    with pytest.raises(SecretRefused, match="sealed for 'totp-seed/user-1', not for "
                                            "'totp-seed/user-2'"):
        box.open("totp-seed/user-2", sealed)
    # relabelled to pass the first check, it still does not authenticate
    relabelled = sealed.replace(":totp-seed/user-1:", ":totp-seed/user-2:")
    with pytest.raises(SecretRefused, match="altered or damaged"):
        box.open("totp-seed/user-2", relabelled)


def test_an_altered_secret_is_refused(tmp_path: Path) -> None:
    box = ensure_region_key(tmp_path)
    sealed = box.seal("fleet-ssh-key", b"private key")
    head, body = sealed.rsplit(":", 1)
    flipped = body[:5] + ("A" if body[5] != "A" else "B") + body[6:]
    with pytest.raises(SecretRefused, match="'fleet-ssh-key' was altered or damaged"):
        box.open("fleet-ssh-key", f"{head}:{flipped}")
    with pytest.raises(SecretRefused, match="not a sealed secret"):
        box.open("fleet-ssh-key", "private key")
    with pytest.raises(SecretRefused, match="format version 9"):
        box.open("fleet-ssh-key", sealed.replace(":1:", ":9:", 1))
    with pytest.raises(SecretRefused, match="nonce is damaged"):
        box.open("fleet-ssh-key", ":".join([*sealed.split(":")[:4], "AAAA", body]))


def test_a_secret_of_another_key_is_refused(tmp_path: Path) -> None:
    sealed = ensure_region_key(tmp_path / "a").seal("fleet-ssh-key", b"k")
    other = ensure_region_key(tmp_path / "b")
    with pytest.raises(SecretRefused, match="sealed with another region key"):
        other.open("fleet-ssh-key", sealed)
    # the same key id with another key (a forged id) does not authenticate either
    forged = RegionKey(os.urandom(KEY_BYTES))
    forged.key_id = other.key_id
    with pytest.raises(SecretRefused, match="altered or damaged"):
        other.open("fleet-ssh-key", forged.seal("fleet-ssh-key", b"k"))


def test_a_purpose_is_a_plain_name(tmp_path: Path) -> None:
    box = ensure_region_key(tmp_path)
    for bad in ("", "Fleet", "a:b", "x" * 200):
        with pytest.raises(ValueError, match="a secret's purpose"):
            box.seal(bad, b"x")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_key_others_may_read_is_refused_at_start(tmp_path: Path, mode: int) -> None:
    ensure_region_key(tmp_path)
    path = region_key_path(tmp_path)
    path.chmod(mode)
    with pytest.raises(RegionKeyError, match=f"has mode {mode:04o}.*chmod 600"):
        ensure_region_key(tmp_path)


def test_an_unreadable_or_damaged_key_is_refused(tmp_path: Path) -> None:
    path = region_key_path(tmp_path)
    with pytest.raises(RegionKeyError, match="cannot read the region key"):
        load_region_key(tmp_path)
    path.write_bytes(b"short")
    path.chmod(0o600)
    with pytest.raises(RegionKeyError, match="is 5 bytes, not 32"):
        ensure_region_key(tmp_path)
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RegionKeyError, match="cannot read the region key"):
        ensure_region_key(tmp_path)
    path.unlink()
    path.mkdir(mode=0o700)
    with pytest.raises(RegionKeyError, match="not a regular file"):
        ensure_region_key(tmp_path)


def test_the_controller_refuses_to_start_with_a_key_others_may_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from controller.main import main

    data_dir = tmp_path / "c"
    assert main(["init", "--data-dir", str(data_dir)]) == 0
    capsys.readouterr()
    path = region_key_path(data_dir)
    path.chmod(0o644)
    assert main(["init", "--data-dir", str(data_dir)]) == 2
    assert capsys.readouterr().err == (
        f"vauban-controller: secrets: the region key {path} has mode 0644: others than its "
        f"owner may read it; run 'chmod 600 {path}' (and consider the secrets it seals "
        "exposed if others did read it)\n")
