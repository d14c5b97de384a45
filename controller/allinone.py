"""`make up` / `make down`: an all-in-one region on this machine.

Controller (SQLite under var/) and one local agent run in the background with
logs under var/log and PID files under var/run; `down` stops exactly those
PIDs. Running VMs are left alone by both.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from controller.services.totp import code_from_uri

VENV_BIN = Path(sys.executable).parent
_children: dict[int, subprocess.Popen[bytes]] = {}  # started by this process, reaped on stop


@dataclass(frozen=True)
class Service:
    """A background process known by its PID file."""

    name: str
    pidfile: Path
    logfile: Path

    def pid(self) -> int | None:
        """The PID if the file names a live process of ours, else None."""
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"vauban" in cmdline else None

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> int:
        """Start `argv` detached unless already running; returns its PID."""
        running = self.pid()
        if running is not None:
            return running
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.logfile.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # logs name clients, nodes and paths: for root only
        fd = os.open(self.logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)
        with open(fd, "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    env={**os.environ, **(env or {})})
        _children[proc.pid] = proc
        self.pidfile.write_text(f"{proc.pid}\n")
        return proc.pid

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM the recorded PID, SIGKILL it after `timeout`; True if one was running."""
        pid = self.pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)  # waiting for a process to exit has no event to block on
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        child = _children.pop(pid, None)
        if child is not None:
            child.wait()
        self.pidfile.unlink(missing_ok=True)
        return True


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def free_port() -> int:
    """A TCP port of the loopback free now (for a region beside others on one machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: object, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except requests.RequestException:
            pass
        time.sleep(interval)  # polling a process we do not own an event for
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass(frozen=True)
class Layout:
    root: Path
    port: int = 8443
    host: str = "127.0.0.1"  # where the controller listens (the lab: its bridge address)

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def controller_dir(self) -> Path:
        return self.root / "controller"

    @property
    def agent_dir(self) -> Path:
        return self.root / "agent"

    @property
    def ca_file(self) -> Path:
        return self.controller_dir / "pki" / "ca.pem"

    @property
    def password_file(self) -> Path:
        return self.controller_dir / "admin-password"

    @property
    def totp_file(self) -> Path:
        """The admin's one-time code seed, an otpauth:// URI (0600)."""
        return self.controller_dir / "admin-totp"

    def service(self, name: str) -> Service:
        return Service(name, self.root / "run" / f"{name}.pid", self.root / "log" / f"{name}.log")


def start_controller(lay: Layout, env: dict[str, str] | None = None) -> int:
    """Start the controller (VAUBAN_* settings in `env`) and wait until it answers."""
    pid = lay.service("controller").start(
        [str(VENV_BIN / "vauban-controller"), "serve", "--data-dir", str(lay.controller_dir),
         "--port", str(lay.port), "--host", lay.host], env)
    wait_until(lambda: lay.ca_file.exists() and requests.get(
        f"{lay.url}/api/v1/ca.pem", verify=str(lay.ca_file), timeout=2).ok, 60,
        "the controller to answer")
    return pid


# the admin tokens this process got, per controller and credentials: a one-time code is
# accepted once, so a second login within the same 30 s would be refused
_admin_tokens: dict[tuple[str, str, str], tuple[str, datetime]] = {}


def admin_token(lay: Layout) -> str:
    """A bearer token of the region's admin: logged in with the password and the code of
    the seed in its file at the first call, the same token afterwards while it is valid
    for another hour (a new password or seed, as of a region made again, logs in anew)."""
    password = lay.password_file.read_text().strip()
    uri = lay.totp_file.read_text().strip()
    key = (lay.url, password, uri)
    cached = _admin_tokens.get(key)
    now = datetime.now(UTC)
    if cached is not None and cached[1] > now + timedelta(hours=1):
        return cached[0]
    r = requests.post(f"{lay.url}/api/v1/tokens", verify=str(lay.ca_file), timeout=10, json={
        "username": "admin", "password": password, "totp": code_from_uri(uri, now)})
    r.raise_for_status()
    token = str(r.json()["token"])
    _admin_tokens[key] = (token, datetime.fromisoformat(r.json()["expires_at"]))
    return token


def create_join_token(lay: Layout, token: str, description: str) -> dict[str, Any]:
    """A one-time join token made with the admin's `token`: {token, ca_sha256, ...}."""
    r = requests.post(f"{lay.url}/api/v1/join-tokens", verify=str(lay.ca_file), timeout=30,
                      json={"description": description},
                      headers={"Authorization": f"Bearer {token}"})
    r.raise_for_status()
    made: dict[str, Any] = r.json()
    return made


def join_agent(lay: Layout, token: str, name: str) -> None:
    """Join the local agent once; a data dir that already joined is kept."""
    if (lay.agent_dir / "node.json").exists():
        return
    jt = create_join_token(lay, token, f"all-in-one {name}")
    subprocess.run([str(VENV_BIN / "vauban-agent"), "--data-dir", str(lay.agent_dir), "join",
                    "--controller", lay.url, "--token", jt["token"], "--ca-sha256",
                    jt["ca_sha256"], "--name", name], check=True)


def start_agent(lay: Layout, settings: Path | None = None) -> int:
    """Start the local agent, with the settings file `settings` if given."""
    config = ["--config", str(settings)] if settings is not None else []
    return lay.service("agent").start(
        [str(VENV_BIN / "vauban-agent"), *config, "--data-dir", str(lay.agent_dir), "run"])


def wait_node_up(lay: Layout, token: str, timeout: float = 120) -> None:
    def up() -> bool:
        r = requests.get(f"{lay.url}/api/v1/nodes", verify=str(lay.ca_file), timeout=5,
                         headers={"Authorization": f"Bearer {token}"})
        return r.ok and any(n["state"] == "up" for n in r.json())
    wait_until(up, timeout, "the local node to report")


CEPH_POOLS = ("vauban", "vauban-fast")


def _minicluster(lay: Layout, action: str) -> None:
    """The all-in-one region's own single-node Ceph cluster (var/ceph), started or stopped."""
    pools = [a for p in CEPH_POOLS for a in ("--pool", p)] if action == "start" else []
    subprocess.run([str(VENV_BIN / "python"), "-m", "agent.drivers.storage.rbd.minicluster",
                    action, "--dir", str(lay.root / "ceph"), *pools], check=True)


def storage_env(lay: Layout, storage: str) -> dict[str, str]:
    """Controller settings for `storage`; the choice is kept, as a region cannot switch."""
    chosen = lay.root / "storage"
    if chosen.exists() and chosen.read_text().strip() != storage:
        raise SystemExit(f"this region was set up with {chosen.read_text().strip()} storage; "
                         f"run 'make down' and remove {lay.root} to start over with {storage}")
    lay.root.mkdir(parents=True, exist_ok=True)
    chosen.write_text(storage + "\n")
    if storage == "localfs":
        return {"VAUBAN_STORAGE": "localfs"}
    _minicluster(lay, "start")
    ceph = lay.root / "ceph"
    return {"VAUBAN_STORAGE": "rbd", "VAUBAN_CEPH_CONF": str(ceph / "ceph.conf"),
            "VAUBAN_CEPH_KEYRING": str(ceph / "ceph.client.vauban.keyring"),
            "VAUBAN_CEPH_FENCE_KEYRING": str(ceph / "ceph.client.vauban-fence.keyring"),
            "VAUBAN_CEPH_POOL": CEPH_POOLS[0], "VAUBAN_CEPH_VOLUME_POOLS": ",".join(CEPH_POOLS)}


def up(lay: Layout, image: Path | None, storage: str = "localfs") -> None:
    start_controller(lay, storage_env(lay, storage))
    token = admin_token(lay)
    join_agent(lay, token, os.uname().nodename.split(".")[0].lower() or "node-1")
    start_agent(lay)
    wait_node_up(lay, token)
    env = {**os.environ, "VAUBAN_URL": lay.url, "VAUBAN_TOKEN": token,
           "VAUBAN_CA_FILE": str(lay.ca_file)}
    images = json.loads(subprocess.run([str(VENV_BIN / "vauban"), "image", "list", "--json"],
                                       env=env, check=True, capture_output=True).stdout)
    if image is not None and not any(i["name"] == "testguest" for i in images):
        subprocess.run([str(VENV_BIN / "vauban"), "image", "import", str(image), "--name",
                        "testguest", "--os", "busybox"], env=env, check=True)
    print(f"""
Vauban all-in-one region is up.
  web UI:       {lay.url}/   (log in as admin with the password and a one-time code;
                the browser trusts the controller once it trusts the region CA below)
  API:          {lay.url}/api/v1   (OpenAPI: {lay.url}/api/v1/openapi.json)
  CA:           {lay.ca_file}
  admin user:   admin, password in {lay.password_file}, one-time code seed (an
                otpauth:// URI for an authenticator app) in {lay.totp_file}
                (both readable by root only)
  storage:      {storage}{' (Ceph cluster in ' + str(lay.root / 'ceph') + ')'
                                if storage == 'ceph' else ''}
  logs:         {lay.root / 'log'}
  CLI:          vauban login --url {lay.url} --ca-file {lay.ca_file} \\
                  --password-file {lay.password_file} --totp-file {lay.totp_file}
                (a code is accepted once: a second login within 30 s waits for the next)
                vauban vm create demo --image testguest --cpus 1 --memory 256 --wait
  stop:         make down""")


def down(lay: Layout) -> None:
    for name in ("agent", "controller"):
        if lay.service(name).stop():
            print(f"stopped {name}")
    if (lay.root / "ceph" / "cluster.json").exists():
        _minicluster(lay, "stop")
        print("stopped the Ceph cluster")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m controller.allinone")
    p.add_argument("action", choices=["up", "down"])
    p.add_argument("--root", default="var", help="state, logs and PID files")
    p.add_argument("--port", type=int, default=int(os.environ.get("VAUBAN_PORT", "8443")))
    p.add_argument("--image", help="test guest image to import")
    p.add_argument("--storage", choices=["localfs", "ceph"], default="localfs",
                   help="where VM disks live: local qcow2 files, or a single-node Ceph cluster")
    a = p.parse_args(argv)
    lay = Layout(Path(a.root).resolve(), a.port)
    if a.action == "up":
        up(lay, Path(a.image) if a.image else None, a.storage)
    else:
        down(lay)
    return 0


if __name__ == "__main__":
    sys.exit(main())
