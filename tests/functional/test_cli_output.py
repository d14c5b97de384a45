"""`-o`, `-c`, the show views and `--no-wait` of the `vauban` CLI against the real API
(Flask's test client): what the API answers, printed for people and for programs."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from typing import Any

import pytest
import yaml
from flask.testing import FlaskClient

from controller.cli import main as cli
from controller.region import Region
from tests.functional.cli_helpers import ApiClient, cli_answered_by
from tests.functional.helpers import RAW_IMAGE, Api


class CountingClient(ApiClient):
    """The CLI's client, answered by the API, counting the requests it sends."""

    sent: list[str] = []

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        CountingClient.sent.append(f"{method} {path}")
        return super().request(method, path, **kwargs)


@pytest.fixture
def api(client: FlaskClient, region: Region, monkeypatch: pytest.MonkeyPatch) -> Api:
    a = cli_answered_by(Api(client, region), monkeypatch)
    CountingClient.sent = []
    monkeypatch.setattr(cli, "Client", lambda _settings: CountingClient(a))
    a.join_node("n1")
    digest = hashlib.sha256(RAW_IMAGE).hexdigest()
    assert a.post(f"/api/v1/images?name=base&disk_format=raw&sha256={digest}",
                  data=RAW_IMAGE, content_type="application/octet-stream").status_code == 201
    return a


def _out(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert cli.main(list(argv)) == 0
    return capsys.readouterr().out


def test_lists_in_every_format_sizes_exact_for_programs(
        api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    table = _out(capsys, "image", "list").splitlines()
    assert table[0].split()[:4] == ["NAME", "PROJECT", "FORMAT", "SIZE"]
    assert table[1].split()[:5] == ["base", "default", "raw", "1", "MiB"]  # 1 MiB of zeros
    rows = list(csv.reader(io.StringIO(_out(capsys, "image", "list", "-o", "csv"))))
    assert rows[0] == ["name", "project", "disk_format", "size_bytes", "virtual_size_bytes",
                       "os", "id"]
    assert rows[1][0] == "base" and rows[1][3] == str(len(RAW_IMAGE))
    listed = yaml.safe_load(_out(capsys, "image", "list", "-o", "yaml", "-c", "name,size"))
    assert listed == [{"name": "base", "size_bytes": len(RAW_IMAGE)}]
    assert json.loads(_out(capsys, "node", "list", "--json")) == \
        json.loads(_out(capsys, "node", "list", "-o", "json"))
    assert [line.split()[0] for line in _out(capsys, "node", "list", "-c", "name").split("\n")
            if line] == ["NAME", "n1"]


def test_an_unknown_column_or_format_sends_nothing(
        api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["vm", "list", "-c", "name,colour"], ["vm", "list", "-o", "xml"],
                 ["volume", "show", "v", "-o", "html"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unknown column 'colour' (valid: name, project, state, node, image, vcpus, " \
        "memory, error)" in err
    assert "invalid choice: 'xml' (choose from" in err
    assert CountingClient.sent == []


def test_show_is_readable_by_default_and_machine_readable_when_asked(
        api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    assert "accepted: operation" in _out(capsys, "vm", "create", "web", "--image", "base",
                                         "--cpus", "1", "--memory", "128", "--no-start",
                                         "--no-wait")
    shown = _out(capsys, "vm", "show", "web")
    assert "1 vCPUs, 128 MiB memory" in shown and not shown.startswith("{")
    assert _out(capsys, "vm", "show", "web", "-c", "name,vcpus,memory_mib") == \
        "name: web\nvcpus: 1\nmemory_mib: 128 MiB\n"
    assert json.loads(_out(capsys, "vm", "show", "web", "-o", "json"))["memory_mib"] == 128
    assert _out(capsys, "network", "create", "lan", "--kind", "tenant", "--subnet",
                "10.9.0.0/24")
    view = _out(capsys, "network", "show", "lan").splitlines()
    assert "name: lan" in view and "kind: tenant" in view
    subnets = view[view.index("subnets:") + 1:]  # each subnet indented under the key
    assert subnets[0].startswith("  - ") and any(line.startswith(("  - cidr: ", "    cidr: "))
                                                  and line.endswith("10.9.0.0/24")
                                                  for line in subnets)
    assert yaml.safe_load(_out(capsys, "network", "show", "lan", "-o", "yaml"))["name"] == "lan"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["network", "show", "lan", "-c", "colour"])
    assert exit_.value.code == 2
    assert "unknown field 'colour' (valid: " in capsys.readouterr().err
