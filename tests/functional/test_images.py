"""Image upload: streamed, checksum verified, format checked, nothing left on refusal."""

from __future__ import annotations

import hashlib

from flask.testing import FlaskClient

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
