"""`vauban audit verify` and `vauban audit export`, answered by the controller's API."""

from __future__ import annotations

import json
from datetime import UTC
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from controller.cli import main as cli
from controller.db.models import as_utc
from controller.region import Region
from controller.services import audit
from tests.functional.cli_helpers import cli_answered_by
from tests.functional.helpers import Api
from tests.functional.test_audit_chain import _chain, _unguarded


@pytest.fixture
def api(client: FlaskClient, region: Region, monkeypatch: pytest.MonkeyPatch) -> Api:
    a = cli_answered_by(Api(client, region), monkeypatch)
    for i in range(4):
        audit.record_now(region.sessions, "admin", "test.poke", f"thing/{i}", "accepted")
    return a


def test_verify_says_intact_or_names_the_break(api: Api, region: Region,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    head = _chain(region)[-1]
    assert cli.main(["audit", "verify"]) == 0
    assert capsys.readouterr().out == (
        f"audit chain intact: 6 entries; head: entry 6 {head.hash}\n")
    _unguarded(region.engine, "UPDATE audit_events SET target = 'thing/x' WHERE seq = 4")
    assert cli.main(["audit", "verify"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"audit chain BROKEN: 1 break(s) in 6 entries; head: entry 6 {head.hash}",
        "  entry 4: edited: entry 4 was edited: its fields no longer give its hash"]


def test_an_export_verifies_offline_and_its_tampering_is_named(
        api: Api, region: Region, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chain = _chain(region)
    out = tmp_path / "audit.jsonl"
    since = as_utc(chain[3].at).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")  # UTC
    assert cli.main(["audit", "export", "--since", since, "--output", str(out)]) == 0
    lines = out.read_text().splitlines(keepends=True)
    assert len(lines) == 1 + 3 + 1
    assert cli.main(["audit", "verify", "--file", str(out)]) == 0
    assert capsys.readouterr().out == (
        f"audit chain intact: 3 entries after entry 3 ({chain[2].hash}); "
        f"head: entry 6 {chain[5].hash}\n")
    out.write_text("".join([lines[0], lines[1], lines[3], lines[4]]))  # entry 5 cut out
    assert cli.main(["audit", "verify", "--file", str(out)]) == 1
    assert capsys.readouterr().out.splitlines()[1:] == [
        "  entry 5: removed: entry 5 is missing (removed)"]
    out.write_text("".join(lines[:-1]))  # the head line cut off
    assert cli.main(["audit", "verify", "--file", str(out), "--json"]) == 1
    assert '"kind": "removed"' in capsys.readouterr().out


def test_export_to_stdout_and_unreadable_files(api: Api, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["audit", "export"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 + 6 + 1 and '"type":"anchor"' in printed[0]
    junk = tmp_path / "junk.jsonl"
    junk.write_text("hello\n")
    assert cli.main(["audit", "verify", "--file", str(junk)]) == 1
    assert "cannot be verified: line 1 is not JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["audit", "export", "--since", "yesterday"])
    assert "'yesterday' is not an ISO 8601 date or time" in capsys.readouterr().err


def test_list_takes_the_api_filters(api: Api, region: Region,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    chain = _chain(region)
    assert cli.main(["audit", "list", "--target", "thing/2", "--json"]) == 0
    assert [e["target"] for e in json.loads(capsys.readouterr().out)] == ["thing/2"]
    assert cli.main(["audit", "list", "--target", "thing/", "--before",
                     str(chain[-1].seq), "--json"]) == 0
    assert [e["target"] for e in json.loads(capsys.readouterr().out)] == [
        "thing/2", "thing/1", "thing/0"]  # newest first, the newest one paged off
    since = as_utc(chain[-1].at).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    assert cli.main(["audit", "list", "--since", since, "--action", "test.poke",
                     "--json"]) == 0
    assert [e["target"] for e in json.loads(capsys.readouterr().out)] == ["thing/3"]
    assert cli.main(["audit", "list", "--project", "nowhere", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_list_sends_a_zero_it_is_given(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    # --before 0 and --limit 0 were dropped, and the whole trail's newest page printed
    for option in ("--before", "--limit"):
        assert cli.main(["audit", "list", option, "0", "--json"]) != 0
        assert "greater than or equal to 1" in capsys.readouterr().err
