"""What must never be baked into an image every node boots: host keys, ids, secrets.

Two nodes installed from one ISO must not share an SSH host key or a machine id, and the
ISO must carry no secret of the build machine. `strip_identity` removes them from a root;
`identity_problems` finds them in a listing of an image, and the builder refuses to write
an ISO while it finds any.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

# paths (relative to the root, no leading '/') that must not exist in any layer
FORBIDDEN = (
    re.compile(r"etc/ssh/ssh_host_[^/]*"),
    re.compile(r"var/lib/dbus/machine-id"),
    re.compile(r"etc/vauban/firstboot\.toml"),
    re.compile(r"var/lib/vauban/agent/.+"),  # a node's identity, certificates, join token
    re.compile(r"root/\.ssh/.*"),
    re.compile(r"home/[^/]+/\.ssh/.*"),
    re.compile(r"etc/ceph/.*\.keyring"),
    re.compile(r"var/lib/systemd/random-seed"),
    re.compile(r"var/lib/systemd/credential\.secret"),
    re.compile(r"etc/ssl/private/.+"),
)
# files that may exist but must be empty (systemd writes them on first boot)
MUST_BE_EMPTY = ("etc/machine-id", "etc/hostname")


def strip_identity(root: Path) -> None:
    """After it, `root` holds no host key, machine id, random seed or hostname."""
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    for name in MUST_BE_EMPTY:
        (root / name).write_text("")
    for name in ("var/lib/dbus/machine-id", "var/lib/systemd/random-seed",
                 "var/lib/systemd/credential.secret"):
        (root / name).unlink(missing_ok=True)


def identity_problems(paths: Iterable[str], sizes: dict[str, int]) -> list[str]:
    """What is wrong in a layer holding `paths` (relative, no leading '/'), whose regular
    files have `sizes`: one line per forbidden path or non-empty identity file."""
    problems = []
    for path in paths:
        if any(rule.fullmatch(path) for rule in FORBIDDEN):
            problems.append(f"{path}: must not be in the image")
    for name in MUST_BE_EMPTY:
        if sizes.get(name, 0) != 0:
            problems.append(f"{name}: must be empty, holds {sizes[name]} bytes")
    return problems
