"""`vauban-agent`: join a region once, then run the node agent."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from agent import certs
from agent.client import ControllerClient, Refused, ask_until_answered
from agent.config import AgentConfig, NodeIdentity
from agent.daemon import Agent
from agent.drivers.registry import GPUS, load_gpu, load_hypervisor, load_network
from agent.enroll import JoinError, join
from agent.hypervisor_tls import HypervisorTls
from agent.inventory import HardwareReporter, underlay_address
from agent.pool_agent import pool_agent
from agent.settings_file import DEFAULT_PATH, SettingsFileError, agent_config
from agent.storage_setup import make_storage
from hardware.gpus import probe_gpus
from hardware.kvmprobe import probe_kvm
from hardware.pci import probe_iommu, probe_pci
from hardware.qualify import ProfileError, load_profile
from hardware.sysfs import Root

log = logging.getLogger("vauban.agent")


def _config(args: argparse.Namespace) -> AgentConfig:
    """The settings file, then the flags given (SettingsFileError if the file is bad)."""
    flags = {"data_dir": args.data_dir}
    if args.command == "run":
        flags.update(gpu=args.gpu, hardware_profile=args.hardware_profile)
    return agent_config(Path(args.config), flags)


def gpu_driver_name(setting: str, root: Root | None = None) -> str:
    """'auto' becomes 'nvidia' when the PCI bus shows an NVIDIA GPU, else 'none'."""
    if setting != "auto":
        return setting
    root = root or Root("/")
    found = probe_gpus(root, probe_pci(root), probe_iommu(root))
    return "nvidia" if found else "none"


def _read_token(path: str) -> str:
    """The join token from a file ("-": standard input), so that it never shows in the
    process list. JoinError when it cannot be read or is empty."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise JoinError(f"cannot read the join token from {path}: {e}") from e
    if not text.strip():
        raise JoinError(f"the join token file {path} is empty")
    return text.strip()


def cmd_join(args: argparse.Namespace) -> int:
    try:
        token = args.token if args.token is not None else _read_token(args.token_file)
        identity = join(_config(args), args.controller, token, args.ca_sha256, args.name)
    except JoinError as e:
        print(f"vauban-agent: join failed: {e}", file=sys.stderr)
        return 1
    print(f"joined as node {identity.name} ({identity.node_id})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = _config(args)
    if not config.node_file.exists():
        print(f"vauban-agent: {config.data_dir} has not joined a region; run "
              "'vauban-agent join' first", file=sys.stderr)
        return 1
    identity = NodeIdentity.load(config.node_file)
    recovered = certs.recover(config)
    if recovered:
        log.warning("node certificate: %s", recovered)
    if config.hypervisor == "xapi":
        return _run_pool(config, identity)
    try:
        profile = load_profile(config.hardware_profile)
    except ProfileError as e:
        print(f"vauban-agent: {e}", file=sys.stderr)
        return 2
    gpu_name = gpu_driver_name(config.gpu)
    kvm = probe_kvm(timeout=config.kvm_probe_timeout_s, cache=config.kvm_probe_cache)
    log.info("KVM %s: %s", "usable" if kvm.usable else "not usable (TCG)", kvm.detail)
    tls = HypervisorTls(identity.node_id, config.ca_path,
                        underlay_address(identity.controller_url), config.cert_renew_fraction,
                        root=config.pki_root) if config.hypervisor_tls else None
    hypervisor = load_hypervisor(config.hypervisor, uri=config.libvirt_uri,
                                 accelerated=kvm.usable,
                                 **({"tls_ready": tls.ready} if tls is not None else {}))
    client = ControllerClient(config, identity)
    stopping, running = _stop_on_signals()
    try:
        settings = ask_until_answered("storage settings", stopping, client.storage_settings)
    except Refused as e:
        return _refused(e)
    if settings is None:
        return 0
    log.info("storage: %s", settings.driver)
    storage, prepare_disks = make_storage(settings, config, hypervisor)
    agent = Agent(config, identity, client, hypervisor, storage, kvm, settings.driver,
                  stopping=stopping, prepare_disks=prepare_disks,
                  network=load_network(config.network),
                  gpu=load_gpu(gpu_name, **({} if gpu_name == "none"
                                             else {"records": config.gpu_records})),
                  hardware=HardwareReporter(profile, kvm.usable, kvm.detail,
                                            config.hardware_refresh_s),
                  settings=settings,
                  hypervisor_tls=tls)
    running.append(agent)
    log.info("agent for node %s (%s) talking to %s", identity.name, identity.node_id,
             identity.controller_url)
    try:
        agent.run()
    finally:
        agent.gpu.close()
    return _refused(agent.refused) if agent.refused is not None else 0


def _stop_on_signals() -> tuple[threading.Event, list[Agent]]:
    """An event SIGTERM and SIGINT set, and the agents they stop (appended by the caller)."""
    stopping = threading.Event()
    running: list[Agent] = []

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping the agent (VMs keep running)", signum)
        stopping.set()
        for a in running:
            a.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return stopping, running


def _run_pool(config: AgentConfig, identity: NodeIdentity) -> int:
    """The agent of an XCP-ng pool (agent/pool_agent.py) until stopped."""
    client = ControllerClient(config, identity)
    stopping, running = _stop_on_signals()
    try:
        settings = ask_until_answered("pool settings", stopping, client.xapi_settings)
    except Refused as e:
        return _refused(e)
    if settings is None:
        return 0
    agent, link = pool_agent(config, identity, client, settings, stopping)
    running.append(agent)
    log.info("agent for XCP-ng pool %s (%s) at %s, talking to %s", identity.name,
             identity.node_id, settings.url, identity.controller_url)
    try:
        agent.run()
    finally:
        link.stop()
    return _refused(agent.refused) if agent.refused is not None else 0


def _refused(e: Refused) -> int:
    """Exit status 3, with the reason on stderr: another protocol needs an upgrade, a removed
    node a new join, neither a retry."""
    print(f"vauban-agent: the controller refuses this agent: {e}", file=sys.stderr)
    return 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vauban-agent", description=__doc__)
    parser.add_argument("--config", default=str(DEFAULT_PATH),
                        help="settings file (TOML; flags win over it; none is fine)")
    parser.add_argument("--data-dir", help="the agent's state directory (default var/agent)")
    sub = parser.add_subparsers(dest="command", required=True)
    j = sub.add_parser("join", help="join a region with a one-time token")
    j.add_argument("--controller", required=True, help="e.g. https://10.0.0.1:8443")
    secret = j.add_mutually_exclusive_group(required=True)
    secret.add_argument("--token", help="from 'vauban join-token create' (shows in ps: "
                                        "prefer --token-file)")
    secret.add_argument("--token-file", help="a file holding the token ('-': standard input)")
    j.add_argument("--ca-sha256", required=True, help="the region CA's SHA-256, to pin it")
    j.add_argument("--name", required=True, help="this node's name in the region")
    j.set_defaults(func=cmd_join)
    r = sub.add_parser("run", help="run the agent in the foreground")
    r.add_argument("--gpu", choices=["auto", *sorted(GPUS)],
                   help="GPU driver: auto (nvidia if an NVIDIA GPU is present), nvidia, none")
    r.add_argument("--hardware-profile",
                   help="qualification profile (name in hardware/profiles, or a YAML file)")
    r.set_defaults(func=cmd_run)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(threadName)s %(message)s")
    try:
        result: int = args.func(args)
    except SettingsFileError as e:
        print(f"vauban-agent: settings file refused: {e}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
