"""Unit tests for images.seed: build a NoCloud seed and read it back with pycdlib."""

from __future__ import annotations

import io
import json
import pathlib

import pycdlib
import pytest
import yaml

from agent.protocol import CloudInitSeed
from images.seed import MIN_SEED_BYTES, build_nocloud_seed, render_meta_data

SEED = CloudInitSeed(
    instance_id="6f1c0d5e-5b5e-4d8e-9a36-0d7c3f1b2a10",
    hostname="web-1",
    user_data="#!/bin/sh\necho héllo\n",
)


def _read(path: pathlib.Path) -> tuple[str, str, dict[str, bytes]]:
    """Return (PVD volume id, Joliet volume id, {Rock Ridge name: bytes}) of the ISO at `path`."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        assert iso.pvd is not None and iso.joliet_vd is not None
        pvd = iso.pvd.volume_identifier.decode().strip()
        joliet = iso.joliet_vd.volume_identifier.decode("utf-16-be").strip()
        files: dict[str, bytes] = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_dot() or child.is_dotdot():
                continue
            name = child.rock_ridge.name().decode()
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path="/" + name)
            files[name] = buf.getvalue()
        for name, data in files.items():
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, joliet_path="/" + name)
            assert buf.getvalue() == data
        return pvd, joliet, files
    finally:
        iso.close()


def test_seed_has_label_and_files(tmp_path: pathlib.Path) -> None:
    dest = tmp_path / "seed.iso"
    build_nocloud_seed(SEED, dest)
    pvd, joliet, files = _read(dest)
    assert pvd == "cidata"
    assert joliet == "cidata"
    assert set(files) == {"meta-data", "user-data"}
    assert files["user-data"] == SEED.user_data.encode()
    assert files["meta-data"] == (
        b'instance-id: "6f1c0d5e-5b5e-4d8e-9a36-0d7c3f1b2a10"\nlocal-hostname: "web-1"\n'
    )
    assert list(tmp_path.iterdir()) == [dest]


def test_network_config_is_added_when_given(tmp_path: pathlib.Path) -> None:
    dest = tmp_path / "seed.iso"
    netcfg = "version: 2\nethernets: {}\n"
    build_nocloud_seed(SEED, dest, network_config=netcfg)
    _, _, files = _read(dest)
    assert set(files) == {"meta-data", "user-data", "network-config"}
    assert files["network-config"] == netcfg.encode()


def test_keys_go_to_meta_data_and_the_default_user_to_vendor_data(
        tmp_path: pathlib.Path) -> None:
    """cloud-init reads NoCloud's meta-data public-keys for the default user, and lets
    user-data override vendor-data: the platform's default user name is vendor-data."""
    keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK alice@laptop", "ssh-rsa AAAAB3Nza: x"]
    dest = tmp_path / "seed.iso"
    build_nocloud_seed(SEED.model_copy(update={"public_keys": keys, "default_user": "ops"}),
                       dest)
    _, _, files = _read(dest)
    assert set(files) == {"meta-data", "user-data", "vendor-data"}
    meta = yaml.safe_load(files["meta-data"])
    assert meta["public-keys"] == keys and meta["local-hostname"] == "web-1"
    vendor = files["vendor-data"].decode()
    assert vendor.startswith("#cloud-config\n")
    assert yaml.safe_load(vendor) == {"user": {"name": "ops"}}
    build_nocloud_seed(SEED, dest)  # no keys, no user name: neither appears
    _, _, files = _read(dest)
    assert set(files) == {"meta-data", "user-data"} and b"public-keys" not in files["meta-data"]


def test_empty_user_data(tmp_path: pathlib.Path) -> None:
    dest = tmp_path / "seed.iso"
    build_nocloud_seed(CloudInitSeed(instance_id="i-1", hostname="h"), dest)
    _, _, files = _read(dest)
    assert files["user-data"] == b""


def test_rebuild_replaces_existing_file(tmp_path: pathlib.Path) -> None:
    dest = tmp_path / "seed.iso"
    dest.write_bytes(b"old")
    build_nocloud_seed(SEED, dest)
    assert _read(dest)[0] == "cidata"
    assert list(tmp_path.iterdir()) == [dest]


def test_failure_leaves_dest_and_no_temp_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "seed.iso"
    dest.write_bytes(b"old")

    def boom(self: pycdlib.PyCdlib, outfp: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(pycdlib.PyCdlib, "write_fp", boom)
    with pytest.raises(OSError, match="disk full"):
        build_nocloud_seed(SEED, dest)
    assert dest.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [dest]


@pytest.mark.parametrize("value", ["123", "true", "no", "2001-12-14", "a: b", 'q"uote'])
def test_meta_data_values_stay_strings(value: str) -> None:
    text = render_meta_data(CloudInitSeed(instance_id=value, hostname="h"))
    # A YAML double-quoted scalar written with JSON syntax: a string whatever it looks like.
    first = text.splitlines()[0]
    assert first.startswith('instance-id: "') and first.endswith('"')
    assert json.loads(first.removeprefix("instance-id: ")) == value


def test_seed_is_padded_so_guest_probes_find_it(tmp_path: pathlib.Path) -> None:
    # a 64 KiB ISO on a virtio disk was not found by the guest's findfs (it reads past the end)
    dest = tmp_path / "seed.iso"
    build_nocloud_seed(CloudInitSeed(instance_id="i", hostname="h", user_data=""), dest)
    assert dest.stat().st_size == MIN_SEED_BYTES
