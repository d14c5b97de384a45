"""Shared by the e2e tests that boot the Debian cloud image: reading what cloud-init printed
on the serial console, and SSH into the guest from a namespace of the test."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

# safety nets under TCG on a loaded 2-core machine, never timing checks
BOOT_DEADLINE_S = 900
HOST_KEYS = re.compile(r"-----BEGIN SSH HOST KEY KEYS-----\r?\n(.*?)-----END SSH HOST KEY KEYS",
                       re.S)


def new_ssh_key(path: Path) -> Path:
    """A fresh ed25519 key pair without passphrase at `path` (and `path`.pub)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def console_text(vm: dict[str, Any]) -> str:
    """The VM's serial log so far ('' before it exists)."""
    try:
        return Path(vm["console_log"]).read_text(errors="replace")
    except OSError:
        return ""


def ssh(ns: str, key: Path, known_hosts: Path, target: str, command: str
        ) -> subprocess.CompletedProcess[str]:
    """`command` run over SSH from namespace `ns`, the guest's host key checked."""
    return subprocess.run(
        ["ip", "netns", "exec", ns, "ssh", "-i", str(key), "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
         "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10", target, command],
        capture_output=True, text=True, check=False, timeout=120)
