"""The node's first boot: `python -m appliance.firstboot`, run by vauban-firstboot.service
while /etc/vauban/firstboot.toml exists (written by the installer, 0600).

In order: make what must be unique to this machine (SSH host keys when missing; the
machine id, which the image leaves empty and systemd fills), prepare the host as the
base role does (kernel modules, kernel settings, /dev/kvm's group and mode), join the
region with `vauban-agent join` (the token passed in a 0600 file, the controller's
CA pinned by its SHA-256, the host name as node name), then enable and start the
agent. After a successful join firstboot.toml and the token file are deleted and the
console says `VAUBAN-NODE: joined as <name> (<id>)`. A failed join says
`VAUBAN-NODE: not joined: <why>` on the console, keeps firstboot.toml (re-read before
each attempt, so an operator may correct it) and tries again after a growing delay.

`--live`: on the live system booted without `vauban.install`, answers given on the
kernel command line or a VAUBAN medium configure the running system (host name,
management network, firstboot.toml) and the same first boot follows: a demo node.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field, ValidationError

from agent.config import NodeIdentity
from agent.settings_file import SettingsFileError
from agent.settings_file import agent_config as load_agent_config
from appliance import network, target
from appliance.answers import AnswersError, Strict, gather
from appliance.cmd import CommandError, Console, Runner, run

MARK = "VAUBAN-NODE: "
AGENT = "/opt/vauban/venv/bin/vauban-agent"
BACKOFF_FIRST_S = 5.0
BACKOFF_MAX_S = 300.0


class FirstbootError(Exception):
    """A step of the first boot failed; the message says which and why."""


class FirstbootConfig(Strict):
    controller: str
    join_token: str = Field(min_length=1)
    ca_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    name: str = Field(min_length=1)


@dataclass(frozen=True)
class Paths:
    """Where the first boot reads and writes (tests point these into a folder)."""

    root: Path = Path("/")
    run_dir: Path = Path("/run/vauban")
    agent: str = AGENT

    @property
    def firstboot(self) -> Path:
        return self.root / target.FIRSTBOOT

    @property
    def agent_config(self) -> Path:
        return self.root / target.AGENT_TOML

    @property
    def ssh_dir(self) -> Path:
        return self.root / "etc/ssh"

    @property
    def machine_id(self) -> Path:
        return self.root / "etc/machine-id"

    @property
    def modules(self) -> Path:
        return self.root / "etc/modules-load.d/vauban.conf"

    @property
    def sysctl(self) -> Path:
        return self.root / "etc/sysctl.d/60-vauban.conf"

    @property
    def error_file(self) -> Path:
        """The last reason the node is not joined (the console banner shows it)."""
        return self.run_dir / "firstboot.error"

    @property
    def token_file(self) -> Path:
        return self.run_dir / "join-token"


def _ensure_kvm() -> bool:
    from agent.hostprep import ensure_kvm_device, ensure_qemu_user

    ensure_qemu_user()
    return ensure_kvm_device()


@dataclass
class Deps:
    runner: Runner = run
    kvm: Callable[[], bool] = _ensure_kvm
    sleep: Callable[[float], None] = time.sleep
    console: Console = field(default_factory=lambda: Console(serial=None))


def ensure_host_keys(ssh_dir: Path, runner: Runner) -> bool:
    """SSH host keys exist afterwards; True when they had to be made."""
    if any(ssh_dir.glob("ssh_host_*_key")):
        return False
    runner(["ssh-keygen", "-A"])
    return True


def ensure_machine_id(path: Path, runner: Runner) -> str:
    """This machine's id (systemd writes it at boot from an empty file; made here if it
    did not). FirstbootError when it is still empty."""
    text = path.read_text().strip() if path.exists() else ""
    if not text:
        runner(["systemd-machine-id-setup"])
        text = path.read_text().strip() if path.exists() else ""
    if not text:
        raise FirstbootError(f"{path} is still empty after systemd-machine-id-setup")
    return text


def prepare_host(paths: Paths, deps: Deps) -> list[str]:
    """Load the modules of modules-load.d/vauban.conf, apply sysctl.d/60-vauban.conf, give
    /dev/kvm its group and mode: what the base role does beyond installing packages.
    Returns what was done; FirstbootError naming the step that failed."""
    done = []
    try:
        modules = [m.strip() for m in paths.modules.read_text().splitlines()
                   if m.strip() and not m.startswith("#")] if paths.modules.exists() else []
        for module in modules:
            deps.runner(["modprobe", module])
        done.append(f"modules {', '.join(modules) or 'none'}")
        if paths.sysctl.exists():
            deps.runner(["sysctl", "-q", "-p", str(paths.sysctl)])
            done.append("kernel settings")
        done.append("/dev/kvm ready" if deps.kvm() else "no /dev/kvm")
    except Exception as e:  # a command, a file, or hostprep's own error: said, not hidden
        raise FirstbootError(f"host preparation: {e}") from e
    return done


def read_config(path: Path) -> FirstbootConfig:
    """firstboot.toml, strictly. FirstbootError saying what is wrong."""
    try:
        return FirstbootConfig.model_validate(tomllib.loads(path.read_text()))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise FirstbootError(f"{path}: {e}") from e
    except ValidationError as e:
        raise FirstbootError(f"{path}: " + "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())) from e


def joined_as(agent_config: Path) -> tuple[str, str] | None:
    """(name, node id) when the agent holds an identity, else None."""
    try:
        identity_file = load_agent_config(agent_config, {}).node_file
        identity = NodeIdentity.load(identity_file)
    except (OSError, ValueError, KeyError, SettingsFileError):
        return None
    return identity.name, identity.node_id


def join(cfg: FirstbootConfig, paths: Paths, runner: Runner) -> None:
    """`vauban-agent join` with the token in a 0600 file, deleted afterwards whatever
    happened. FirstbootError with the agent's reason when the join fails."""
    paths.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    target._write(paths.token_file, cfg.join_token + "\n", 0o600)
    try:
        runner([paths.agent, "--config", str(paths.agent_config), "join",
                "--controller", cfg.controller, "--ca-sha256", cfg.ca_sha256,
                "--name", cfg.name, "--token-file", str(paths.token_file)])
    except CommandError as e:
        why = e.output.splitlines()[-1] if e.output else str(e)
        raise FirstbootError(why.removeprefix("vauban-agent: ")) from e
    finally:
        paths.token_file.unlink(missing_ok=True)


def _not_joined(paths: Paths, deps: Deps, why: str) -> None:
    paths.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths.error_file.write_text(why + "\n")
    deps.console.say(f"{MARK}not joined: {why}")


def firstboot(paths: Paths, deps: Deps, attempts: int | None = None) -> int:
    """The whole first boot (see the module's docstring). Returns 0 once joined and the
    agent asked to start; 1 when `attempts` joins all failed (None: never gives up)."""
    say = deps.console.say
    try:
        if ensure_host_keys(paths.ssh_dir, deps.runner):
            say(f"{MARK}made this machine's SSH host keys")
        ensure_machine_id(paths.machine_id, deps.runner)
        say(f"{MARK}host prepared: {'; '.join(prepare_host(paths, deps))}")
    except (FirstbootError, CommandError, OSError) as e:
        _not_joined(paths, deps, str(e))
        return 1
    delay, tried = BACKOFF_FIRST_S, 0
    while (found := joined_as(paths.agent_config)) is None:
        tried += 1
        try:
            join(read_config(paths.firstboot), paths, deps.runner)
            continue
        except FirstbootError as e:
            _not_joined(paths, deps, f"{e} (attempt {tried}, next in {delay:.0f} s)")
        if attempts is not None and tried >= attempts:
            return 1
        deps.sleep(delay)
        delay = min(delay * 2, BACKOFF_MAX_S)
    paths.firstboot.unlink(missing_ok=True)
    paths.error_file.unlink(missing_ok=True)
    try:
        deps.runner(["systemctl", "enable", "vauban-agent.service"])
        deps.runner(["systemctl", "start", "--no-block", "vauban-agent.service"])
    except CommandError as e:
        _not_joined(paths, deps, f"joined, but the agent does not start: {e}")
        return 1
    say(f"{MARK}joined as {found[0]} ({found[1]})")
    return 0


def live_setup(paths: Paths, deps: Deps, cmdline: str) -> bool:
    """On the live system: apply the answers, if any, to the running system (host name,
    management network, root's SSH keys, firstboot.toml). False when there are none
    (nothing changed)."""
    try:
        _mode, answers = gather(cmdline, deps.runner)
    except AnswersError as e:
        _not_joined(paths, deps, f"the answers are unusable: {e}")
        return False
    if answers is None:
        return False
    link = network.resolve_interface(answers.network.interface, network.list_links())
    target.write_hostname(paths.root, answers.hostname)
    target.write_network(paths.root, answers, link.mac)
    target.write_ssh_keys(paths.root, answers.root_ssh_keys)
    target.write_agent_settings(paths.root, answers.agent_settings())
    target.write_firstboot(paths.root, answers)
    deps.runner(["hostname", answers.hostname])
    deps.runner(["systemctl", "restart", "systemd-networkd.service"])
    with contextlib.suppress(CommandError):
        deps.runner(["/lib/systemd/systemd-networkd-wait-online", "--timeout=120"])
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vauban-firstboot", description=__doc__.splitlines()[0])
    parser.add_argument("--live", action="store_true",
                        help="live system: take the answers from the kernel command line or "
                             "the VAUBAN medium first")
    args = parser.parse_args(argv)
    paths, deps = Paths(), Deps()
    if args.live:
        try:
            if not live_setup(paths, deps, Path("/proc/cmdline").read_text()):
                return 0
        except (network.NetworkError, CommandError, OSError) as e:
            _not_joined(paths, deps, f"live setup: {e}")
            return 1
    return firstboot(paths, deps)


if __name__ == "__main__":
    sys.exit(main())
