"""Image uploads against a real controller process (gunicorn, TLS), spoken to on a raw socket
so that a client can misbehave as a real one does: declare one size, send less, hang up."""

from __future__ import annotations

import hashlib
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.e2e.region import E2ERegion, wait_for

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
LIMIT = 4 * MIB  # the region's max_image_bytes in these tests


@pytest.fixture(scope="module")
def region(libvirtd: list[int]) -> Iterator[E2ERegion]:
    with E2ERegion.admin_controller({"VAUBAN_MAX_IMAGE_BYTES": str(LIMIT)}) as r:
        yield r


def api(region: E2ERegion, path: str) -> Any:
    r = requests.get(f"{region.layout.url}/api/v1{path}", verify=str(region.layout.ca_file),
                     headers={"Authorization": f"Bearer {region.token}"}, timeout=30)
    r.raise_for_status()
    return r.json()


def open_upload(region: E2ERegion, name: str, sha256: str, declared: int) -> ssl.SSLSocket:
    """A TLS connection that has sent the headers of an upload declaring `declared` bytes."""
    ctx = ssl.create_default_context(cafile=str(region.layout.ca_file))
    raw = socket.create_connection(("127.0.0.1", region.layout.port), timeout=60)
    sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    sock.sendall((
        f"POST /api/v1/images?name={name}&disk_format=raw&sha256={sha256} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{region.layout.port}\r\n"
        f"Authorization: Bearer {region.token}\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Content-Length: {declared}\r\n\r\n").encode())
    return sock


def read_response(sock: ssl.SSLSocket) -> tuple[int, bytes]:
    """The status code and body of the response."""
    buf = b""
    while b"\r\n\r\n" not in buf and (data := sock.recv(65536)):
        buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length and (data := sock.recv(65536)):
        body += data
    return int(head.split(b" ", 2)[1]), body


def image_dir_files(region: E2ERegion) -> list[str]:
    image_dir = region.layout.controller_dir / "images"
    return sorted(p.name for p in image_dir.iterdir()) if image_dir.exists() else []


def only_stored_images_have_files(region: E2ERegion) -> bool:
    """No file (partial or whole) in the image directory but those of listed images."""
    return image_dir_files(region) == sorted(i["id"] for i in api(region, "/images"))


def test_truncated_upload_is_not_stored(region: E2ERegion) -> None:
    sent = bytes(MIB)  # a valid raw image on its own: only its size gives it away
    sock = open_upload(region, "truncated", hashlib.sha256(sent).hexdigest(), 2 * MIB)
    sock.sendall(sent)
    sock.shutdown(socket.SHUT_WR)  # the client hangs up after half of what it declared...
    while sock.recv(65536):  # ...and leaves nothing unread, so its close sends no reset
        pass                 # that could drop bytes it sent (all of them must arrive)
    sock.close()

    # the controller records every upload's end, stored or refused, in the audit trail
    def upload_ended() -> list[dict[str, Any]]:
        events = api(region, "/audit-events?action=image.import")
        return [e for e in events if e["detail"].get("name", "") == "truncated"
                or e["target"] == "image/truncated"]
    events = wait_for(upload_ended, 60, "the controller to finish with the upload")
    assert [(e["outcome"], e["target"]) for e in events] == [("refused", "image/truncated")]
    assert f"ended after {MIB} of the {2 * MIB} bytes" in events[0]["detail"]["error"]
    assert "truncated" not in [i["name"] for i in api(region, "/images")]
    assert only_stored_images_have_files(region)


def test_declared_size_over_the_limit_is_refused_before_the_body(region: E2ERegion) -> None:
    sock = open_upload(region, "huge", "0" * 64, LIMIT + 512)
    try:
        status, response = read_response(sock)  # answered although no byte of body was sent
    finally:
        sock.close()

    assert status == 413
    assert f"/api/v1/images accepts at most {LIMIT} bytes".encode() in response
    assert "huge" not in [i["name"] for i in api(region, "/images")]
    assert only_stored_images_have_files(region)


def test_cli_upload_declares_its_length_and_is_stored(region: E2ERegion) -> None:
    path = region.root / "blank.raw"
    path.write_bytes(bytes(2 * MIB))

    region.cli("image", "import", str(path), "--name", "blank")

    [image] = [i for i in api(region, "/images") if i["name"] == "blank"]
    assert (image["disk_format"], image["size_bytes"]) == ("raw", 2 * MIB)
    assert image_dir_files(region) == [image["id"]]
