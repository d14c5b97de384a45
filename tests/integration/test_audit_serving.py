"""The audit chain as the real controller keeps it: several worker processes on PostgreSQL
append one chain, each entry names the client's address, and the real CLI exports it over
HTTPS and verifies the export on its own."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import requests

from controller.allinone import admin_token
from tests.e2e.region import E2ERegion
from tests.integration.test_controller_serving import on_postgres

__all__ = ["on_postgres"]  # the fixture, shared


@pytest.mark.parametrize("on_postgres", [3], indirect=True)
def test_worker_processes_append_one_chain_that_exports_and_verifies(
        on_postgres: E2ERegion, tmp_path: Path) -> None:
    region = on_postgres
    region.token = admin_token(region.layout)
    ca, url = str(region.layout.ca_file), f"{region.layout.url}/api/v1"
    headers = {"Authorization": f"Bearer {region.token}"}
    start = threading.Barrier(6)
    answers: list[int] = []

    def write(n: int) -> None:
        start.wait()
        with requests.Session() as http:  # a connection each: spread over the workers
            for i in range(5):
                answers.append(http.post(f"{url}/join-tokens", json={"description": f"{n}.{i}"},
                                         headers=headers, verify=ca, timeout=120).status_code)
                if i < 3:  # 18 in all: fewer than lock the address out (20)
                    answers.append(http.post(f"{url}/tokens", verify=ca, timeout=120, json={
                        "username": f"nobody-{n}-{i}", "password": "wrong"}).status_code)

    workers = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(answers) == [201] * 30 + [401] * 18

    report = json.loads(region.cli("audit", "verify", "--json"))
    # the default security group, the test's login, 30 join tokens and 18 refused logins
    assert report["ok"] and report["entries"] == report["head_seq"] == 50
    export = tmp_path / "audit.jsonl"
    region.cli("audit", "export", "--since", "2000-01-01", "--output", str(export))
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    assert [line["type"] for line in (lines[0], lines[-1])] == ["anchor", "head"]
    assert lines[-1]["hash"] == report["head_hash"]
    entries = lines[1:-1]
    assert [e["seq"] for e in entries] == list(range(1, 51))
    refused = [e for e in entries if e["outcome"] == "refused"]
    assert len(refused) == 18 and {e["source"] for e in refused} == {"127.0.0.1"}
    assert "intact: 50 entries" in region.cli("audit", "verify", "--file", str(export))
    entries[9]["actor"] = "mallory"
    export.write_text("".join(json.dumps(line) + "\n" for line in lines))
    broken = region.run_cli("audit", "verify", "--file", str(export))
    assert broken.returncode == 1 and "entry 10 was edited" in broken.stdout
