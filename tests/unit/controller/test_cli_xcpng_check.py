"""The pure parts of `vauban xcpng check`: wire types, redaction, normalization, and the
input checks that exit 2 before anything is sent."""

from __future__ import annotations

import io
import json
import xmlrpc.client
from pathlib import Path

import pytest

from controller.cli.main import main
from controller.cli.xcpng_check import Transcript, normalized_lines
from controller.cli.xcpng_check_reads import Finding, class_types, wire_type

POOL = "11111111-2222-3333-4444-555555555555"
VM = "66666666-7777-8888-9999-aaaaaaaaaaaa"


@pytest.mark.parametrize(("value", "expected"), [
    ("OpaqueRef:NULL", "ref"), ("OpaqueRef:1-2", "ref"), ("42", "int-as-string"),
    ("-1", "int-as-string"), ("4 GiB", "string"), ("", "string"), (True, "bool"),
    (7, "int"), (0.5, "float"), ({}, "dict"), ([], "list"),
    (xmlrpc.client.DateTime("20260101T00:00:00Z"), "datetime")])
def test_wire_types(value: object, expected: str) -> None:
    assert wire_type(value) == expected


def test_class_types_gather_every_type_seen() -> None:
    assert class_types([{"a": "1", "b": True}, {"a": "x"}]) == {
        "a": ["int-as-string", "string"], "b": ["bool"]}


def test_transcript_redacts_secrets_refs_and_workload_uuids() -> None:
    out = io.StringIO()
    transcript = Transcript(out, ["hunter2", "OpaqueRef:sess"])
    transcript.keep.add(POOL)
    transcript.record(Finding("x", "failed", f"HANDLE_INVALID OpaqueRef:ab-12 of VM {VM} "
                                             "(password hunter2)",
                              {"pool": POOL, "refs": ["OpaqueRef:NULL", "OpaqueRef:sess"]}))
    line = json.loads(out.getvalue())
    assert line["why"] == "HANDLE_INVALID OpaqueRef:<redacted> of VM <uuid> (password <secret>)"
    assert line["data"] == {"pool": POOL, "refs": ["OpaqueRef:NULL", "<secret>"]}


def test_normalized_lines_replace_what_changes_between_runs() -> None:
    one = json.dumps({"check": "run", "url": {"host": "h", "port": 1}, "started": "t1",
                      "seconds": 1.5, "why": f"pool {POOL} at https://h:443/ pinned "
                      + ":".join(["AB"] * 32), "vauban": "0.1"})
    two = json.dumps({"vauban": "0.2", "why": f"pool {VM} at https://h:8443/ pinned "
                      + "cd" * 32, "seconds": 9, "started": "t2", "check": "run",
                      "url": {"port": 2, "host": "h"}})
    assert normalized_lines(one) == normalized_lines(two)
    assert "<sha256>" in normalized_lines(one)[0]
    assert normalized_lines(one) != normalized_lines(one.replace('"h"', '"other"'))


@pytest.mark.parametrize("args", [
    ["http://pool.example"], ["https://pool.example/path"],
    ["https://pool.example", "--fingerprint", "not-a-sha"],
    ["https://pool.example", "--password-file", "/nonexistent/password"]])
def test_bad_input_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    monkeypatch.setenv("VAUBAN_CONFIG", str(tmp_path / "cli.json"))
    password = tmp_path / "password"
    password.write_text("pw\n")
    defaults = {"--fingerprint": "ab" * 32, "--password-file": str(password)}
    for option, value in defaults.items():
        if option not in args:
            args = [*args, option, value]
    assert main(["xcpng", "check", "--user", "root", *args]) == 2
    assert "vauban: error:" in capsys.readouterr().err
