"""Image upload: streamed, checksum verified, format checked, nothing left on refusal."""

from __future__ import annotations

import hashlib
import io
import subprocess
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from controller.config import ControllerConfig
from controller.region import Region
from tests.functional.helpers import RAW_IMAGE, Api


def _files(region: Region) -> list[str]:
    return sorted(p.name for p in region.config.image_dir.iterdir())


def test_upload_then_agent_downloads_the_same_bytes(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    r = api.import_image("tiny", RAW_IMAGE)
    assert r.status_code == 201
    img = r.json
    assert img["size_bytes"] == len(RAW_IMAGE) and img["virtual_size_bytes"] == len(RAW_IMAGE)
    assert img["sha256"] == hashlib.sha256(RAW_IMAGE).hexdigest()
    assert "signature" not in img  # never set nor checked: not shown as if it were
    node = api.join_node("n1")
    dl = client.get(f"/agent/v1/images/{img['id']}/file", environ_overrides=node.environ())
    assert dl.status_code == 200 and dl.data == RAW_IMAGE
    assert [i["name"] for i in api.get("/api/v1/images").json] == ["tiny"]


def test_checksum_mismatch_stores_nothing(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    r = api.import_image("tiny", RAW_IMAGE, sha256="0" * 64)
    assert r.status_code == 422
    assert "checksum mismatch" in r.json["detail"]
    assert _files(region) == []
    assert api.get("/api/v1/images").json == []


def test_claimed_format_must_match(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    r = api.import_image("tiny", RAW_IMAGE, disk_format="qcow2")
    assert r.status_code == 422 and "is raw" in r.json["detail"]
    assert _files(region) == []


def test_duplicate_name_and_bad_query(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    assert api.import_image("tiny", RAW_IMAGE).status_code == 201
    assert api.import_image("tiny", RAW_IMAGE).status_code == 409
    r = api.post("/api/v1/images?name=x&disk_format=vmdk&sha256=" + "a" * 64, data=b"x",
                 content_type="application/octet-stream")
    assert r.status_code == 422 and "disk_format" in r.json["detail"]
    r = api.post("/api/v1/images?name=x&disk_format=raw&sha256=" + "a" * 64 + "&foo=1",
                 data=b"x", content_type="application/octet-stream")
    assert r.status_code == 422 and "'foo': unknown field" in r.json["detail"]
    assert len(_files(region)) == 1


def test_image_in_use_cannot_be_deleted(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    api.import_image("tiny", RAW_IMAGE)
    api.join_node("n1")
    api.post("/api/v1/instances", json={"name": "vm", "image": "tiny", "vcpus": 1,
                                        "memory_mib": 128})
    r = api.delete("/api/v1/images/tiny")
    assert r.status_code == 409 and "vm" in r.json["detail"]
    assert len(_files(region)) == 1


def test_delete_unused_image_removes_file(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    api.import_image("tiny", RAW_IMAGE)
    assert api.delete("/api/v1/images/tiny").status_code == 204
    assert _files(region) == [] and api.get("/api/v1/images/tiny").status_code == 404


def test_deleted_image_is_retired_on_every_node(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    image_id = api.import_image("tiny", RAW_IMAGE).json["id"]
    node = api.join_node("n1")
    gen = api.desired(node)["generation"]
    assert api.desired(node)["retired_images"] == []
    assert api.delete("/api/v1/images/tiny").status_code == 204
    after = api.desired(node, after=gen)
    assert after["generation"] > gen and after["retired_images"] == [image_id]
    # the name is free again; the new image has a new id
    again = api.import_image("tiny", RAW_IMAGE).json["id"]
    assert again != image_id


class Unreadable(io.BytesIO):
    """A request body that fails the test if the controller reads a byte of it."""

    def read(self, size: int | None = -1) -> bytes:
        raise AssertionError("the controller read the body of an upload it should refuse")

    readline = read  # type: ignore[assignment]

    def readinto(self, b: Any) -> int:
        raise AssertionError("the controller read the body of an upload it should refuse")


def _upload_url(name: str, sha256: str = "0" * 64, disk_format: str = "raw") -> str:
    return f"/api/v1/images?name={name}&disk_format={disk_format}&sha256={sha256}"


def test_declared_size_over_the_limit_is_refused_unread(client: FlaskClient,
                                                        region: Region) -> None:
    api = Api(client, region)
    limit = region.config.max_image_bytes
    r = api.post(_upload_url("huge"), input_stream=Unreadable(),
                 content_type="application/octet-stream",
                 environ_overrides={"CONTENT_LENGTH": str(limit + 1)})
    assert r.status_code == 413
    assert r.json["detail"] == (f"the body is {limit + 1} bytes; /api/v1/images accepts at "
                                f"most {limit} bytes")
    assert r.json["max_bytes"] == limit
    assert _files(region) == [] and api.get("/api/v1/images").json == []


def test_upload_without_content_length_is_refused(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    r = client.post(_upload_url("chunked", hashlib.sha256(RAW_IMAGE).hexdigest()),
                    input_stream=io.BytesIO(RAW_IMAGE), content_type="application/octet-stream",
                    headers={**api.headers, "Transfer-Encoding": "chunked"})
    assert r.status_code == 411 and "Content-Length" in r.json["detail"]
    assert _files(region) == [] and api.get("/api/v1/images").json == []


def test_max_image_bytes_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    monkeypatch.setenv("VAUBAN_MAX_IMAGE_BYTES", str(8 * 1024**3))
    assert ControllerConfig.from_env(data_dir=tmp_path).max_image_bytes == 8 * 1024**3
    assert ControllerConfig(data_dir=tmp_path).max_image_bytes == 64 * 1024**3
    with pytest.raises(ValueError, match="positive"):
        ControllerConfig(data_dir=tmp_path, max_image_bytes=0)
    monkeypatch.setenv("VAUBAN_MAX_IMAGE_BYTES", "64G")
    with pytest.raises(ValueError, match="VAUBAN_MAX_IMAGE_BYTES must be a whole number"):
        ControllerConfig.from_env(data_dir=tmp_path)


def _qcow2(tmp_path: Path, *opts: str) -> bytes:
    path = tmp_path / "upload.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *opts, str(path), "1M"],
                   check=True)
    return path.read_bytes()


def test_qcow2_naming_a_host_file_as_data_file_is_refused(
        client: FlaskClient, region: Region, tmp_path: Path) -> None:
    api = Api(client, region)
    host_file = tmp_path / "host-file"
    host_file.write_bytes(b"host secret".ljust(1024 * 1024, b"\0"))
    data = _qcow2(tmp_path, "-o", f"data_file={host_file},data_file_raw=on")

    r = api.import_image("evil", data, disk_format="qcow2")

    assert r.status_code == 422
    assert r.json["detail"] == ("qcow2 image refused: it names an external data file, which "
                                "QEMU would open from the node's filesystem as the guest's "
                                "disk; nothing was stored")
    assert _files(region) == [] and api.get("/api/v1/images").json == []


def test_standalone_qcow2_is_stored_with_its_virtual_size(
        client: FlaskClient, region: Region, tmp_path: Path) -> None:
    api = Api(client, region)
    r = api.import_image("plain", _qcow2(tmp_path), disk_format="qcow2")
    assert r.status_code == 201 and r.json["virtual_size_bytes"] == 1024 * 1024


def test_a_file_that_is_no_disk_is_not_stored_as_raw(client: FlaskClient,
                                                     region: Region) -> None:
    api = Api(client, region)
    r = api.import_image("script", b"#!/bin/sh\necho hello\n")
    assert r.status_code == 422
    assert r.json["detail"] == ("a raw image is a whole number of 512-byte sectors; this one "
                                "is 21 bytes (21 left over); nothing was stored")
    assert _files(region) == [] and api.get("/api/v1/images").json == []
