"""A network namespace of the test's own, to reach VMs on a tenant network from outside
them: one veth end in it, the other left for the test to plug into the node's bridge."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def probe_namespace() -> Iterator[tuple[str, str]]:
    """A namespace of this test with one veth end in it; yields (namespace, host end)."""
    tag = uuid.uuid4().hex[:6]
    ns, host_end = f"vbt-{tag}", f"vbt-{tag}-h"
    ip("netns", "add", ns)
    try:
        ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
        yield ns, host_end
    finally:
        subprocess.run(["ip", "link", "del", host_end], check=False, capture_output=True)
        ip("netns", "del", ns)


def pings(ns: str, address: str, count: int = 1) -> bool:
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", str(count), "-W", "1",
                           address], capture_output=True, check=False).returncode == 0
