"""The console status banner: `python -m appliance.banner`, run by vauban-banner.service.

It says what an operator at the console needs first: the node's name, its addresses,
the Vauban version, whether it has joined its region (as which node, to which
controller) or why not (the first boot's last error, or that it is installing), and
its SSH host key fingerprints (to pin when adding it to the fleet by hand). It is written as
/run/issue.d/vauban.issue, which agetty shows above the login prompt (a link from
/etc/issue.d makes agetty read it while /etc/issue exists), and printed on the
console whenever it changes; agetty is then told to redraw its prompt.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.inventory import ssh_host_keys
from appliance.cmd import Console, run_status
from appliance.firstboot import Paths, joined_as
from controller.fleet.keys import fingerprint

ISSUE = Path("/run/issue.d/vauban.issue")
ISSUE_LINK = Path("/etc/issue.d/vauban.issue")
RELEASE = Path("/etc/vauban/release.json")
REFRESH_S = 5.0


@dataclass(frozen=True)
class State:
    name: str
    addresses: list[str]
    version: str
    joined: str | None  # "node-7 (id) at https://..." when joined
    why_not: str | None  # why not joined (None when joined)
    ssh_keys: list[str] = field(default_factory=list)  # "ED25519 SHA256:..." to pin


def ssh_fingerprints(root: Path) -> list[str]:
    """The host keys' fingerprints as an operator pins them (`vauban node add
    --host-key-sha256`), e.g. "ED25519 SHA256:..."; none before the first boot made them."""
    found = []
    for line in ssh_host_keys(root):
        kind, blob = line.split()
        label = kind.removeprefix("ssh-").split("-")[0].upper()
        found.append(f"{label} {fingerprint(base64.b64decode(blob))}")
    return found


def addresses(status: Callable[[list[str]], tuple[int, str]] | None = None) -> list[str]:
    """The global addresses of the machine's interfaces, as `iface address/prefix`."""
    rc, out = (status or run_status)(["ip", "-json", "address", "show"])
    if rc != 0:
        return []
    found = []
    for link in json.loads(out or "[]"):
        for addr in link.get("addr_info", []):
            if addr.get("scope") == "global":
                found.append(f"{link['ifname']} {addr['local']}/{addr['prefixlen']}")
    return found


def version(release: Path = RELEASE) -> str:
    """The vauban software installed (a rollout upgrades it in place), else the ISO's."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("vauban")
    except PackageNotFoundError:
        pass
    try:
        return str(json.loads(release.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def state(paths: Paths, addrs: list[str], release: Path = RELEASE) -> State:
    """What the banner shows, from the agent's identity and the first boot's files."""
    found = joined_as(paths.agent_config)
    why = None
    if found is None:
        if paths.error_file.exists():
            why = paths.error_file.read_text().strip()
        elif paths.firstboot.exists():
            why = "joining (first boot in progress)"
        elif installing(paths.root):
            why = "installing: the installer's messages follow on this console"
        else:
            why = "no answers were given (live mode): this machine is no region's node"
    return State(name=socket.gethostname(), addresses=addrs, version=version(release),
                 joined=f"{found[0]} ({found[1]})" if found else None, why_not=why,
                 ssh_keys=ssh_fingerprints(paths.root))


def installing(root: Path) -> bool:
    """Whether this boot is the installer's (`vauban.install` on the kernel command line)."""
    try:
        words = (root / "proc/cmdline").read_text().split()
    except OSError:
        return False
    return any(w == "vauban.install" or w.startswith("vauban.install=") for w in words)


def render(s: State) -> str:
    """The banner's text; backslashes doubled, as agetty reads escapes in issue files."""
    lines = [f"Vauban node {s.name} - version {s.version}",
             f"  addresses: {', '.join(s.addresses) or 'none yet'}",
             f"  region:    joined as {s.joined}" if s.joined else
             f"  region:    not joined: {s.why_not}",
             *(f"  ssh key:   {key}" for key in s.ssh_keys), ""]
    return "\n".join(lines).replace("\\", "\\\\") + "\n"


def publish(text: str, issue: Path = ISSUE, link: Path | None = ISSUE_LINK) -> bool:
    """Write `text` as the issue file when it differs; True when it changed."""
    try:
        if issue.read_text() == text:
            return False
    except OSError:
        pass
    issue.parent.mkdir(parents=True, exist_ok=True)
    tmp = issue.with_name(f".{issue.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, issue)
    if link is not None and not link.is_symlink():
        try:
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(issue)
        except OSError:
            pass  # a read-only /etc: the banner still reaches the console
    return True


def refresh(paths: Paths, console: Console) -> bool:
    """One pass: publish the banner, print it and redraw the login prompts if it changed."""
    text = render(state(paths, addresses()))
    if not publish(text):
        return False
    console.say(text.rstrip("\n").replace("\\\\", "\\"))
    run_status(["agetty", "--reload"])
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vauban-banner", description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="refresh once and exit")
    args = parser.parse_args(argv)
    paths, console, stop = Paths(), Console(serial=None), threading.Event()
    refresh(paths, console)
    while not args.once and not stop.wait(REFRESH_S):
        refresh(paths, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
