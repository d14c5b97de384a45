"""The fleet CLI's parsing and output, against a fake API client."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from controller.cli import fleet
from controller.cli.client import Client


class FakeClient(Client):
    """Answers GETs from a script of (path, answer) pairs, in order."""

    def __init__(self, *answers: tuple[str, Any]) -> None:
        self.answers = list(answers)

    def get(self, path: str, **kw: Any) -> Any:
        expected, answer = self.answers.pop(0)
        assert path == expected
        return answer


def _host(host: str, state: str, tasks_done: int = 0, changed: int = 0, task: str = "",
          batch: int = 0, message: str | None = None) -> dict[str, Any]:
    return {"host": host, "batch": batch, "state": state, "task": task,
            "tasks_done": tasks_done, "changed": changed, "message": message}


def _job(state: str, *hosts: dict[str, Any], error: str | None = None) -> dict[str, Any]:
    return {"id": "r-1", "state": state, "upgrade": True, "version": "1.2.0", "batch_size": 1,
            "tags": [], "tasks_expected": 10, "error": error, "operation_id": "op-1",
            "requested_by": "admin", "created_at": "2026-12-01T14:00:00Z", "finished_at": None,
            "hosts": list(hosts)}


def test_label_arg() -> None:
    assert fleet._label_arg("rack=r12") == ("rack", "r12")
    assert fleet._label_arg("rack=") == ("rack", "")
    assert fleet._label_arg("url=a=b") == ("url", "a=b")
    assert fleet._label_arg("rack-") == ("rack", None)
    assert fleet._label_arg("zone-a=x-") == ("zone-a", "x-")
    for bad in ("rack", "=r12", ""):
        with pytest.raises(argparse.ArgumentTypeError,
                           match=f"'{bad}' is not key=value \\(set\\) or key- \\(remove\\)"):
            fleet._label_arg(bad)


def test_rollout_show(capsys: pytest.CaptureFixture[str]) -> None:
    job = _job("failed", _host("n1", "changed", 12, 3, "agent : unit"),
               _host("node-two", "unreachable", 0, 0, "base : packages", batch=1,
                     message="Failed to connect to the host via ssh"),
               error="batch 2 failed on node-two: Failed to connect to the host via ssh")
    args = argparse.Namespace(id="r-1", log=False, json=False)
    assert fleet.cmd_rollout_show(FakeClient(("/rollouts/r-1", job)), args) == 0
    assert capsys.readouterr().out.splitlines() == [
        "rollout r-1: failed, version 1.2.0, batches of 1, upgrade, by admin at "
        "2026-12-01T14:00:00Z",
        "error: batch 2 failed on node-two: Failed to connect to the host via ssh",
        "HOST      BATCH  STATE        TASKS  CHANGED  TASK / MESSAGE",
        "n1        1      changed      12     3        agent : unit",
        "node-two  2      unreachable  0      0        Failed to connect to the host via ssh",
    ]
    args = argparse.Namespace(id="r-1", log=True, json=False)
    assert fleet.cmd_rollout_show(FakeClient(("/rollouts/r-1/log", "PLAY [nodes]\n")),
                                  args) == 0
    assert capsys.readouterr().out == "PLAY [nodes]\n"


def test_follow_prints_each_change_until_the_end(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet, "POLL_S", 0)
    first = _job("running", _host("n1", "running", 4, 1, "base : packages"),
                 _host("n2", "pending", batch=1))
    client = FakeClient(
        ("/rollouts/r-1", first),  # nothing moved: nothing printed
        ("/rollouts/r-1", _job("running", _host("n1", "changed", 10, 2, "agent : unit"),
                               _host("n2", "running", 11, 0, "base : packages", batch=1))),
        ("/rollouts/r-1", _job("succeeded", _host("n1", "changed", 10, 2, "agent : unit"),
                               _host("n2", "ok", 12, 0, "agent : unit", batch=1))),
    )
    assert fleet._follow(client, first) == 0
    assert client.answers == []
    assert capsys.readouterr().out.splitlines() == [
        "rollout r-1: 2 hosts, version 1.2.0, batches of 1",
        "  n1               [########............]   4 tasks   1 changed  running     "
        "base : packages",
        "  n2               [....................]   0 tasks   0 changed  pending     ",
        "  n1               [####################]  10 tasks   2 changed  changed     "
        "agent : unit",
        "  n2               [###################.]  11 tasks   0 changed  running     "
        "base : packages",  # past what was expected, short of the end
        "  n2               [####################]  12 tasks   0 changed  ok          "
        "agent : unit",
        "rollout r-1 succeeded",
    ]


def test_follow_of_a_failed_rollout(capsys: pytest.CaptureFixture[str]) -> None:
    job = _job("failed", _host("n1", "failed", 3, 0, "base : packages",
                               message="No package matching 'qemu' is available"),
               error="batch 1 failed on n1: No package matching 'qemu' is available")
    assert fleet._follow(FakeClient(), job) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[1] == (
        "  n1               [####################]   3 tasks   0 changed  failed      "
        "No package matching 'qemu' is available")
    assert err == ("rollout r-1 failed: batch 1 failed on n1: No package matching 'qemu' is "
                   "available\n(full log: vauban rollout show r-1 --log)\n")
