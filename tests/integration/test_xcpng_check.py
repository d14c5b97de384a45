"""`vauban xcpng check` run as a process against the XAPI simulator over pinned HTTPS:
its normalized transcript against the committed one, pinning, a member's URL, and a
--write run that leaves the pool as it found it, also when a step fails."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from controller.cli.xcpng_check import normalized_lines
from tests.xapi_sim.process import REPO, SimProcess

pytestmark = pytest.mark.integration

COMMITTED = REPO / "tests" / "xapi_sim" / "transcripts" / "simulator.jsonl"
REGENERATE = "VAUBAN_REGENERATE_TRANSCRIPT"
PASSWORD = "secret"  # the simulator's
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _check(pool: SimProcess, tmp_path: Path, *extra: str, member: int = 0,
           fingerprint: str | None = None) -> tuple[int, str, Path]:
    """(exit status, stdout, transcript) of one `vauban xcpng check` process."""
    password = tmp_path / "password"
    password.write_text(PASSWORD + "\n")
    transcript = tmp_path / f"transcript-{len(list(tmp_path.glob('transcript-*')))}.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "controller.cli.main", "xcpng", "check", pool.url(member),
         "--user", "root", "--password-file", str(password), "--transcript", str(transcript),
         "--fingerprint", fingerprint or pool.members[member].fingerprint, *extra],
        cwd=REPO, capture_output=True, text=True, check=False,
        env={**os.environ, "VAUBAN_CONFIG": str(tmp_path / "cli.json")})
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout, transcript


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _live(pool: SimProcess) -> dict[str, set[str]]:
    return {cls: pool.store.live(cls) for cls in ("VM", "VDI", "VBD", "task")}


def _compare(transcript: Path, write: bool) -> None:
    """The run's normalized transcript is the committed one's (its write steps only
    when `write`); with VAUBAN_REGENERATE_TRANSCRIPT=1 a --write run replaces it."""
    if write and os.environ.get(REGENERATE) == "1":
        COMMITTED.parent.mkdir(exist_ok=True)
        shutil.copyfile(transcript, COMMITTED)
    expected = normalized_lines(COMMITTED.read_text())
    if not write:
        expected = [line.replace('"write": true', '"write": false') for line in expected
                    if not line.startswith('{"check": "write.')]
    assert normalized_lines(transcript.read_text()) == expected, (
        f"the check's transcript against the simulator differs from {COMMITTED.name}: if "
        f"the change is meant, regenerate it with {REGENERATE}=1 pytest "
        "tests/integration/test_xcpng_check.py -k write_check_matches, and review the diff")


def test_read_only_check_passes_and_matches_committed(sim_pool: SimProcess,
                                                      tmp_path: Path) -> None:
    before = _live(sim_pool)
    status, out, transcript = _check(sim_pool, tmp_path)
    assert status == 0, out
    assert "ok       login" in out and "ok       events" in out
    assert _live(sim_pool) == before
    _compare(transcript, write=False)


def test_write_check_matches_committed_and_leaves_nothing(sim_pool: SimProcess,
                                                          tmp_path: Path) -> None:
    before = _live(sim_pool)
    status, out, transcript = _check(sim_pool, tmp_path, "--write")
    assert status == 0, out
    assert "ok       write.leftovers" in out
    assert _live(sim_pool) == before
    assert sim_pool.store.sessions == 0  # every session logged out
    _compare(transcript, write=True)


def test_transcript_holds_no_secret_ref_or_workload_uuid(sim_pool: SimProcess,
                                                         tmp_path: Path) -> None:
    status, _, transcript = _check(sim_pool, tmp_path, "--write")
    assert status == 0
    text = transcript.read_text()
    assert PASSWORD not in text
    assert set(re.findall(r"OpaqueRef:[^\"<\s]+", text)) <= {"OpaqueRef:NULL"}
    kept = {m.host_uuid for m in sim_pool.members} | {
        _lines(transcript)[1]["data"]["pool_uuid"]}
    assert set(_UUID.findall(text)) <= kept
    hosts = next(x for x in _lines(transcript) if x["check"] == "certificates")
    assert {h["uuid"] for h in hosts["data"]["hosts"]} == {m.host_uuid
                                                          for m in sim_pool.members}


def test_wrong_fingerprint_exits_2_and_sends_nothing(sim_pool: SimProcess,
                                                     tmp_path: Path) -> None:
    requests = sim_pool.members[0].requests
    status, out, transcript = _check(sim_pool, tmp_path,
                                     fingerprint=sim_pool.members[1].fingerprint)
    assert status == 2
    assert "presented a TLS certificate" in out and "nothing was sent" in out
    assert sim_pool.members[0].requests == requests
    assert sim_pool.store.logins == []
    login = _lines(transcript)[1]
    assert login["outcome"] == "failed" and login["data"] == {"certificate_mismatch": True}


def test_member_url_is_reported_with_the_masters_address(sim_pool: SimProcess,
                                                         tmp_path: Path) -> None:
    status, out, transcript = _check(sim_pool, tmp_path, member=1)
    assert status == 2
    master = sim_pool.members[0].address
    assert f"{sim_pool.members[1].address} is a member of its pool" in out
    assert f"the master is {master}" in out
    login = _lines(transcript)[1]
    assert login["outcome"] == "differs" and login["data"] == {"member": True,
                                                               "master": master}
    assert sim_pool.members[0].requests == 0  # the unpinned master was never asked


def test_failure_mid_write_is_undone_and_reported(sim_pool: SimProcess,
                                                  tmp_path: Path) -> None:
    before = _live(sim_pool)
    sim_pool.fail_next("VM.start", "INTERNAL_ERROR", "injected by the test")
    status, out, _ = _check(sim_pool, tmp_path, "--write")
    assert status == 1
    assert re.search(r"failed +write\.vm_start .*injected by the test", out), out
    assert "write.vm_stop" not in out
    assert re.search(r"ok +write\.cleanup +undone: nothing of the check is left", out), out
    assert _live(sim_pool) == before


def test_failed_cleanup_names_what_is_left(sim_pool: SimProcess, tmp_path: Path) -> None:
    before = _live(sim_pool)
    sim_pool.fail_next("VM.start", "INTERNAL_ERROR", "injected by the test")
    sim_pool.fail_next("VM.destroy", "INTERNAL_ERROR", "destroy refused by the test")
    status, out, transcript = _check(sim_pool, tmp_path, "--write")
    assert status == 1
    (vm,) = sim_pool.store.live("VM") - before["VM"]
    assert re.search(rf"failed +write\.cleanup +left in the pool .*VM {vm}", out), out
    cleanup = next(x for x in _lines(transcript) if x["check"] == "write.cleanup")
    assert vm not in cleanup["why"] and "VM <uuid>" in cleanup["why"]
    sim_pool.store.remove("VM", vm)  # what the check left, gone with the test
    for vdi in sim_pool.store.live("VDI") - before["VDI"]:
        sim_pool.store.remove("VDI", vdi)
    for vbd in sim_pool.store.live("VBD") - before["VBD"]:
        sim_pool.store.remove("VBD", vbd)


def test_a_field_of_another_wire_type_differs(sim_pool: SimProcess, tmp_path: Path) -> None:
    sim_pool.store.modify("network", sim_pool.network, MTU="jumbo")
    status, out, _ = _check(sim_pool, tmp_path)
    assert status == 1
    assert re.search(r"differs +records\.network +MTU is string, expected int-as-string",
                     out), out
    assert "not passed: records.network" in out
