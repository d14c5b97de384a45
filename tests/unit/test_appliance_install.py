"""The installer's sequence with fakes: refusals before any write, a failed step's report."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pytest

from appliance.cmd import CommandError, Console
from appliance.disks import Candidate
from appliance.install import Env, install
from appliance.network import Link

CA = "12" * 32


class Recorder:
    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_on = fail_on

    def __call__(self, argv: Sequence[str], *, input_text: str | None = None) -> str:
        self.calls.append(list(argv))
        if argv[0] == self.fail_on:
            raise CommandError(argv, 1, "mkfs.ext4: Device size reported to be zero")
        if argv[0] == "blkid":
            raise CommandError(argv, 2, "")
        return ""


@pytest.fixture
def answers(tmp_path: Path) -> Path:
    path = tmp_path / "answers.toml"
    path.write_text(f'controller = "https://c:8443"\njoin_token = "tok-12345678"\n'
                    f'ca_sha256 = "{CA}"\nhostname = "node-1"\ndisk = "/dev/vda"\n')
    return path


def env(tmp_path: Path, runner: Recorder, out: io.StringIO, fit: bool = True,
        reboots: list[int] | None = None) -> Env:
    asked = reboots if reboots is not None else []
    vda = Candidate("vda", Path("/dev/vda"), 20 * 10**9, False, None, None)
    live = tmp_path / "live"
    live.mkdir(exist_ok=True)
    (live / "filesystem.module").write_text("00-base.squashfs\n")
    (live / "00-base.squashfs").write_bytes(b"hsqs")
    return Env(console=Console(out, serial=None), runner=runner, live_dir=live,
               mountpoint=tmp_path / "target", candidates=lambda: [vda],
               links=lambda: [Link("ens3", "52:54:00:00:00:01", True, True)],
               qualify=lambda p: (fit, f"Profile {p}:\n  FAIL  kvm  no /dev/kvm\n"),
               ask=_refuse_asking, reboot=lambda: asked.append(1))


def _refuse_asking(_given: object) -> object:
    raise EOFError


def test_an_unfit_server_is_refused_with_its_report(tmp_path: Path, answers: Path) -> None:
    runner, out = Recorder(), io.StringIO()
    assert install(f"vauban.install=auto vauban.answers={answers}",
                   env(tmp_path, runner, out, fit=False)) == 2
    text = out.getvalue()
    assert "VAUBAN-INSTALL: qualification failed\nProfile compute:\n  FAIL  kvm" in text
    assert "VAUBAN-INSTALL: refused: the server does not meet the hardware profile compute" \
        in text
    assert runner.calls == []


def test_no_answers_and_nobody_to_ask_is_a_refusal(tmp_path: Path) -> None:
    runner, out = Recorder(), io.StringIO()
    assert install("vauban.install=auto", env(tmp_path, runner, out)) == 2
    assert "no console to ask" in out.getvalue()
    assert [c[0] for c in runner.calls] == ["blkid"]


def test_a_failed_step_is_named_and_nothing_reboots(tmp_path: Path, answers: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    runner, out, reboots = Recorder(fail_on="mkfs.vfat"), io.StringIO(), []
    monkeypatch.setattr("appliance.disks.holds_data", lambda path: None)
    monkeypatch.setattr("pathlib.Path.exists", lambda self: True)
    rc = install(f"vauban.install=auto vauban.answers={answers}",
                 env(tmp_path, runner, out, reboots=reboots))
    assert rc == 1 and reboots == []
    assert "VAUBAN-INSTALL: failed at making the filesystems: mkfs.vfat -F 32 -n EFI " \
           "/dev/vda2 exited 1" in out.getvalue()
    assert "done, rebooting" not in out.getvalue()
    assert runner.calls[0] == ["wipefs", "--all", "--force", "/dev/vda"]


def test_a_live_system_lacking_a_tool_refuses_before_writing(tmp_path: Path,
                                                             answers: Path) -> None:
    runner, out = Recorder(), io.StringIO()
    e = env(tmp_path, runner, out)
    e.missing_tools = lambda: ["mcopy (mtools)"]
    assert install(f"vauban.install=auto vauban.answers={answers}", e) == 2
    assert "refused: this live system lacks what the install runs: mcopy (mtools)" \
        in out.getvalue()
    assert runner.calls == []


def test_missing_tools_names_grub_platforms(tmp_path: Path) -> None:
    from appliance.install import missing_tools

    (tmp_path / "i386-pc").mkdir()
    (tmp_path / "i386-pc/boot.img").write_bytes(b"x")
    assert [m for m in missing_tools(tmp_path) if m.startswith("GRUB")] == \
        ["GRUB for x86_64-efi (grub-efi-amd64-bin)"]
