"""`--project` (and `--public`) on the CLI's create commands, and the PROJECT column of
their lists, against a fake API client that records what it is sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import pytest

from controller.cli import main as cli
from controller.cli.client import ApiError, Client


class Recorder(Client):
    """Records POSTs and uploads; answers GETs from `rows` (404 for what it lacks)."""

    def __init__(self, rows: dict[str, Any] | None = None) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.rows = rows or {}

    def get(self, path: str, **kw: Any) -> Any:
        if path not in self.rows:
            raise ApiError(404, f"{path} does not exist")
        return self.rows[path]

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        self.sent.append((path, body))
        name = body.get("name") or body["network"]
        return {"kind": "x.create", "target_name": name, "id": "op-1", "state": "pending",
                "name": name, "vni": 7, "mtu": 1450, "vlan": None, "physical": None,
                "network": name, "project": body.get("project"), "mac": "m", "addresses": []}

    def upload_image(self, stream: BinaryIO, params: dict[str, Any]) -> Any:
        stream.read()
        self.sent.append(("/images", params))
        return {"name": params["name"], "id": "img-1", "sha256": params["sha256"]}


def _run(client: Client, *argv: str) -> int:
    args = cli.build_parser().parse_args(list(argv))
    result: int = args.func(client, args)
    return result


@pytest.mark.parametrize(("argv", "path"), [
    (["vm", "create", "a", "--image", "i", "--cpus", "1", "--memory", "64", "--no-wait"],
     "/instances"),
    (["volume", "create", "a", "--size", "1", "--no-wait"], "/volumes"),
    (["network", "create", "a", "--kind", "tenant"], "/networks"),
    (["security-group", "create", "a"], "/security-groups"),
    (["port", "create", "a"], "/ports"),
])
def test_create_sends_the_project_only_when_given(argv: list[str], path: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    c = Recorder()
    assert _run(c, *argv, "--project", "shop") == 0
    assert _run(c, *argv) == 0
    (sent_path, with_project), (_, without) = c.sent
    assert sent_path == path
    assert with_project["project"] == "shop"
    assert "project" not in without


def test_image_import_project_or_public(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "guest.raw"
    image.write_bytes(b"\0" * 512)
    c = Recorder()
    assert _run(c, "image", "import", str(image), "--project", "shop") == 0
    assert _run(c, "image", "import", str(image), "--public") == 0
    assert _run(c, "image", "import", str(image)) == 0
    (_, mine), (_, public), (_, plain) = c.sent
    assert mine["project"] == "shop" and "public" not in mine
    assert public["public"] == "true" and "project" not in public
    assert "project" not in plain and "public" not in plain
    with pytest.raises(SystemExit):  # one or the other: a public image has no project
        cli.build_parser().parse_args(["image", "import", str(image), "--public",
                                       "--project", "shop"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_lists_show_the_project_and_shared_objects(capsys: pytest.CaptureFixture[str]) -> None:
    c = Recorder({"/images": [
        {"name": "debian", "project": None, "disk_format": "qcow2", "size_bytes": 1,
         "virtual_size_bytes": 2, "os": None, "id": "i1"},
        {"name": "mine", "project": "shop", "disk_format": "raw", "size_bytes": 1,
         "virtual_size_bytes": 1, "os": None, "id": "i2"}]})
    assert _run(c, "image", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "PROJECT", "FORMAT"]
    assert [line.split()[:2] for line in lines[1:]] == [["debian", "(shared)"],
                                                        ["mine", "shop"]]
