"""A rollout batch run by the real ansible-runner, ansible-playbook and OpenSSH client:
the fleet key reaches the run's ssh-agent, ssh logs in with it (offering no other key)
to a host whose pinned host key matches, and nothing the run leaves in the job's folder
holds the private key.

The server is paramiko's SSH server on loopback: it accepts the fleet key only, and
answers the playbook's one raw command."""

from __future__ import annotations

import base64
import dataclasses
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from sqlalchemy import select

from controller import __version__
from controller.db.models import FleetHost, RolloutHost
from controller.fleet import jobs
from controller.fleet.keys import ensure_fleet_key, fleet_private_key
from controller.fleet.worker import _run_batch
from controller.region import Region

SITE = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: log in with the fleet key
      ansible.builtin.raw: "true"
"""


class _Server(paramiko.ServerInterface):
    """Accepts `allowed` (a public key) only; records each key offered and each command."""

    def __init__(self, allowed: str) -> None:
        self.allowed = allowed
        self.offered: list[str] = []
        self.commands: list[bytes] = []
        self.exec_asked = threading.Event()

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        self.offered.append(key.get_base64())
        return paramiko.AUTH_SUCCESSFUL if key.get_base64() == self.allowed \
            else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" \
            else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_pty_request(self, *args: Any) -> bool:
        return True

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self.commands.append(command)
        self.exec_asked.set()
        return True


def _serve(listener: socket.socket, host_key: paramiko.PKey, server: _Server) -> None:
    """Serve each connection until `listener` is closed: every command exits 0."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        transport = paramiko.Transport(conn)
        transport.add_server_key(host_key)
        try:
            transport.start_server(server=server)
            channel = transport.accept(60)
            if channel is not None and server.exec_asked.wait(60):
                server.exec_asked.clear()
                channel.send_exit_status(0)
                channel.close()
        except (paramiko.SSHException, EOFError):
            pass
        finally:
            transport.close()


@pytest.fixture
def ssh_server(tmp_path: Path, region: Region) -> Iterator[tuple[int, str, _Server]]:
    """(port, host key line, server) of an SSH server on loopback taking the fleet key."""
    public = ensure_fleet_key(region.config.data_dir)
    host_key = paramiko.Ed25519Key.from_private_key_file(str(_host_key_file(tmp_path)))
    server = _Server(public.split()[1])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    thread = threading.Thread(target=_serve, args=(listener, host_key, server), daemon=True)
    thread.start()
    try:
        yield (listener.getsockname()[1],
               f"{host_key.get_name()} {host_key.get_base64()}", server)
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(60)


def _host_key_file(tmp_path: Path) -> Path:
    path = tmp_path / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True)
    return path


def _local_playbooks(region: Region, tmp_path: Path) -> Region:
    playbooks = tmp_path / "playbooks"
    playbooks.mkdir()
    (playbooks / "site.yml").write_text(SITE)
    (playbooks / "ansible.cfg").write_text("[defaults]\nstdout_callback = default\n")
    return dataclasses.replace(region, config=dataclasses.replace(
        region.config, playbooks_dir=playbooks))


def test_a_rollout_logs_in_with_the_fleet_key_and_leaves_no_copy(
        region: Region, tmp_path: Path, ssh_server: tuple[int, str, _Server]) -> None:
    port, host_key, server = ssh_server
    local = _local_playbooks(region, tmp_path)
    config = local.config
    with local.sessions() as db, db.begin():
        db.add(FleetHost(name="n1", address="127.0.0.1", port=port, host_key=host_key,
                         role="node", created_by="admin"))
    config.releases.mkdir(parents=True, exist_ok=True)
    (config.releases / f"vauban-{__version__}-wheels.tar").write_bytes(b"")
    with local.sessions() as db, db.begin():
        job_id = jobs.start(db, config, "admin", None, [], None, False).id
    folder = config.rollouts_dir / job_id
    folder.mkdir(parents=True)

    public = ensure_fleet_key(config.data_dir)
    _run_batch(local, job_id, folder, ["n1"], 0, [])

    with local.reads() as db:
        row = db.scalars(select(RolloutHost).where(RolloutHost.job_id == job_id)).one()
    assert row.state == "changed", (row.message, (folder / "ansible.log").read_text())
    # ssh offered the fleet key, and no other, and ran the playbook's command
    assert set(server.offered) == {public.split()[1]}
    assert any(b"true" in c for c in server.commands), server.commands
    pem = fleet_private_key(config.data_dir)
    assert_nothing_holds(folder, [pem, *pem.splitlines()[1:-1],
                                  base64.b64encode(pem.encode()).decode()])


def assert_nothing_holds(folder: Path, secrets: list[str]) -> None:
    """No file under `folder` holds any of `secrets`, and no FIFO is left there."""
    for path in folder.rglob("*"):
        mode = path.lstat().st_mode
        assert not stat.S_ISFIFO(mode), f"{path} is a FIFO left behind"
        if stat.S_ISREG(mode):
            text = path.read_text(errors="replace")
            for secret in secrets:
                assert secret not in text, f"{path} holds a secret"
