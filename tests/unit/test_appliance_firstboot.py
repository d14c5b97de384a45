"""The first boot's decisions, with a fake runner in place of the system's tools."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from appliance.cmd import CommandError, Console
from appliance.firstboot import Deps, Paths, firstboot

CA = "ab" * 32
AGENT = "/opt/vauban/venv/bin/vauban-agent"


class FakeSystem:
    """Plays ssh-keygen, systemd-machine-id-setup, modprobe, sysctl, systemctl and
    `vauban-agent join` (which fails `join_failures` times, then writes node.json)."""

    def __init__(self, paths: Paths, data_dir: Path, join_failures: int = 0) -> None:
        self.paths, self.data_dir, self.join_failures = paths, data_dir, join_failures
        self.calls: list[list[str]] = []
        self.tokens: list[tuple[str, int]] = []

    def __call__(self, argv: Sequence[str], *, input_text: str | None = None) -> str:
        argv = list(argv)
        self.calls.append(argv)
        if argv[0] == "ssh-keygen":
            (self.paths.ssh_dir / "ssh_host_ed25519_key").write_text("key")
        elif argv[0] == "systemd-machine-id-setup":
            self.paths.machine_id.write_text("0123456789abcdef0123456789abcdef\n")
        elif argv[0] == AGENT:
            token = Path(argv[argv.index("--token-file") + 1])
            self.tokens.append((token.read_text(), token.stat().st_mode & 0o777))
            if self.join_failures:
                self.join_failures -= 1
                raise CommandError(argv, 1, "vauban-agent: join failed: controller "
                                            "10.0.2.2:8443 unreachable")
            self.data_dir.mkdir(parents=True, exist_ok=True)
            (self.data_dir / "node.json").write_text(json.dumps(
                {"node_id": "n-42", "name": "node-1", "controller_url": "https://c"}))
        return ""

    def ran(self, program: str) -> list[list[str]]:
        return [c for c in self.calls if c[0] == program]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for d in ("etc/ssh", "etc/vauban", "etc/modules-load.d", "etc/sysctl.d"):
        (root / d).mkdir(parents=True)
    (root / "etc/machine-id").write_text("")
    (root / "etc/modules-load.d/vauban.conf").write_text("bridge\nbr_netfilter\n")
    (root / "etc/sysctl.d/60-vauban.conf").write_text("net.bridge.bridge-nf-call-iptables = 1\n")
    (root / "etc/vauban/agent.toml").write_text(f'data_dir = "{tmp_path / "data"}"\n')
    (root / "etc/vauban/firstboot.toml").write_text(
        f'controller = "https://10.0.2.2:8443"\njoin_token = "tok-secret"\n'
        f'ca_sha256 = "{CA}"\nname = "node-1"\n')
    return root


def setup(root: Path, failures: int = 0) -> tuple[Paths, FakeSystem, Deps, io.StringIO,
                                                 list[float], list[int]]:
    paths = Paths(root=root, run_dir=root / "run/vauban", agent=AGENT)
    system = FakeSystem(paths, root.parent / "data", failures)
    out, sleeps, kvm = io.StringIO(), [], []
    deps = Deps(runner=system, kvm=lambda: kvm.append(1) is None, sleep=sleeps.append,
                console=Console(out, serial=None))
    return paths, system, deps, out, sleeps, kvm


def test_first_boot_joins_and_starts_the_agent(root: Path) -> None:
    paths, system, deps, out, sleeps, kvm = setup(root)
    assert firstboot(paths, deps) == 0
    assert system.ran("ssh-keygen") == [["ssh-keygen", "-A"]]
    assert system.ran("systemd-machine-id-setup")
    assert system.ran("modprobe") == [["modprobe", "bridge"], ["modprobe", "br_netfilter"]]
    assert system.ran("sysctl") == [["sysctl", "-q", "-p", str(paths.sysctl)]]
    assert kvm == [1]
    join = system.ran(AGENT)[0]
    assert join[join.index("--controller") + 1] == "https://10.0.2.2:8443"
    assert join[join.index("--ca-sha256") + 1] == CA
    assert join[join.index("--name") + 1] == "node-1"
    assert "tok-secret" not in join, "the token must not show in the process list"
    assert system.tokens == [("tok-secret\n", 0o600)]
    assert not paths.token_file.exists() and not paths.firstboot.exists()
    assert system.ran("systemctl") == [["systemctl", "enable", "vauban-agent.service"],
                                       ["systemctl", "start", "--no-block",
                                        "vauban-agent.service"]]
    assert "VAUBAN-NODE: joined as node-1 (n-42)" in out.getvalue()
    assert sleeps == []


def test_a_failed_join_is_retried_with_a_growing_delay(root: Path) -> None:
    paths, system, deps, out, sleeps, _ = setup(root, failures=3)
    assert firstboot(paths, deps) == 0
    assert sleeps == [5.0, 10.0, 20.0]
    assert out.getvalue().count("VAUBAN-NODE: not joined: join failed: controller "
                                "10.0.2.2:8443 unreachable") == 3
    assert len(system.tokens) == 4 and not paths.token_file.exists()
    assert not paths.error_file.exists() and not paths.firstboot.exists()


def test_giving_up_keeps_firstboot_and_says_why(root: Path) -> None:
    paths, system, deps, out, _sleeps, _ = setup(root, failures=5)
    assert firstboot(paths, deps, attempts=2) == 1
    assert paths.firstboot.exists() and not paths.token_file.exists()
    assert "unreachable" in paths.error_file.read_text()
    assert system.ran("systemctl") == []


def test_an_already_joined_node_does_not_join_again(root: Path) -> None:
    paths, system, deps, out, _s, _k = setup(root)
    (root.parent / "data").mkdir()
    (root.parent / "data/node.json").write_text(json.dumps(
        {"node_id": "n-1", "name": "node-1", "controller_url": "https://c"}))
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("k")
    (root / "etc/machine-id").write_text("0123\n")
    assert firstboot(paths, deps) == 0
    assert system.ran(AGENT) == [] and system.ran("ssh-keygen") == []
    assert system.ran("systemd-machine-id-setup") == []
    assert not paths.firstboot.exists()
    assert "joined as node-1 (n-1)" in out.getvalue()


def test_a_bad_firstboot_file_is_reported_and_kept(root: Path) -> None:
    paths, system, deps, out, _s, _k = setup(root)
    paths.firstboot.write_text('controller = "https://c"\njoin_token = "t"\n'
                               'ca_sha256 = "xyz"\nname = "node-1"\n')
    assert firstboot(paths, deps, attempts=1) == 1
    assert "ca_sha256" in out.getvalue() and paths.firstboot.exists()
    assert system.ran(AGENT) == []


def test_a_failed_host_preparation_stops_before_the_join(root: Path) -> None:
    paths, system, deps, out, _s, _k = setup(root)

    def failing(argv: Sequence[str], *, input_text: str | None = None) -> str:
        if argv[0] == "modprobe":
            raise CommandError(argv, 1, "modprobe: FATAL: Module bridge not found")
        return system(argv)

    deps.runner = failing
    assert firstboot(paths, deps) == 1
    assert "host preparation" in out.getvalue() and "Module bridge not found" in out.getvalue()
    assert system.ran(AGENT) == [] and paths.firstboot.exists()


def test_live_mode_applies_the_answers_to_the_running_system(
        root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.firstboot import live_setup
    from appliance.network import Link

    paths, system, deps, _out, _s, _k = setup(root)
    paths.firstboot.unlink()
    answers = tmp_path / "answers.toml"
    answers.write_text(f'controller = "https://10.0.2.2:8443"\njoin_token = "tok-12345678"\n'
                       f'ca_sha256 = "{CA}"\nhostname = "demo-1"\n'
                       'root_ssh_keys = ["ssh-ed25519 AAAAC3Nza op@x"]\n')
    monkeypatch.setattr("appliance.network.list_links",
                        lambda: [Link("ens3", "52:54:00:00:00:09", True, True)])
    assert live_setup(paths, deps, "boot=live") is False  # no answers: nothing changes
    assert system.calls == [["blkid", "-L", "VAUBAN"]]
    assert not paths.firstboot.exists()
    assert live_setup(paths, deps, f"boot=live vauban.answers={answers}") is True
    assert (root / "etc/hostname").read_text() == "demo-1\n"
    assert "MACAddress=52:54:00:00:00:09" in \
        (root / "etc/systemd/network/10-vauban-mgmt.network").read_text()
    assert (root / "root/.ssh/authorized_keys").read_text() == "ssh-ed25519 AAAAC3Nza op@x\n"
    assert paths.firstboot.stat().st_mode & 0o777 == 0o600
    assert ["hostname", "demo-1"] in system.calls
    assert ["systemctl", "restart", "systemd-networkd.service"] in system.calls
