"""Commands that start an operation wait for it by default, showing progress; `--no-wait`
returns once it is accepted; `--wait` is still taken. Against a fake API client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from controller.cli import main as cli
from controller.cli.client import Client


class Fake(Client):
    """Accepts every change as an operation; `wait` records which it followed."""

    def __init__(self) -> None:
        self.followed: list[str] = []

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return {"kind": "instance.start", "target_name": "web", "id": "op-1",
                "state": "pending", "progress": 0}

    def delete(self, path: str) -> Any:
        return self.post(path)

    def wait(self, op: dict[str, Any], on_progress: Callable[[dict[str, Any]], None],
             timeout: float = 1800) -> dict[str, Any]:
        self.followed.append(op["id"])
        done = {**op, "state": "succeeded", "progress": 100}
        on_progress(done)
        return done


def _run(client: Client, *argv: str) -> int:
    args = cli.build_parser().parse_args(list(argv))
    result: int = args.func(client, args)
    return result


WAITING = [["vm", "start", "web"], ["vm", "delete", "web"],
           ["vm", "create", "web", "--image", "i", "--cpus", "1", "--memory", "64"],
           ["volume", "create", "v", "--size", "1"], ["volume", "detach", "v"]]


@pytest.mark.parametrize("argv", WAITING)
def test_waits_by_default_with_progress(argv: list[str], monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    shown: list[int] = []
    monkeypatch.setattr(cli, "progress_line", lambda _label, percent: shown.append(percent))
    for extra in ([], ["--wait"]):
        c = Fake()
        assert _run(c, *argv, *extra) == 0
        assert c.followed == ["op-1"]
        assert capsys.readouterr().out.endswith(": done\n")
    assert shown == [100, 100]


@pytest.mark.parametrize("argv", WAITING)
def test_no_wait_returns_once_accepted(argv: list[str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    c = Fake()
    assert _run(c, *argv, "--no-wait") == 0
    assert c.followed == []
    assert "accepted: operation op-1" in capsys.readouterr().out


def test_wait_and_no_wait_together_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["vm", "stop", "web"], ["rollout", "run"]):
        with pytest.raises(SystemExit) as exit_:
            cli.build_parser().parse_args([*argv, "--wait", "--no-wait"])
        assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert cli.build_parser().parse_args(["rollout", "run", "--no-wait"]).wait is False
    assert cli.build_parser().parse_args(["node", "add", "h", "--ssh-key", "k",
                                          "--no-wait"]).wait is False
    assert cli.build_parser().parse_args(["node", "add", "h", "--ssh-key", "k"]).wait is True
