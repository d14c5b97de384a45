"""Work done inside another network namespace (tests give drivers one of their own)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

# one switch at a time: pyroute2 keeps the namespaces to return to on one stack
_lock = threading.Lock()


@contextmanager
def in_netns(netns: str | None) -> Iterator[None]:
    """Run the block inside network namespace `netns` (None: where the process is), and
    come back afterwards. What the block opens (sockets, netlink) stays bound to it."""
    if netns is None:
        yield
        return
    from pyroute2 import netns as pyroute2_netns

    with _lock:
        pyroute2_netns.pushns(netns)
        try:
            yield
        finally:
            pyroute2_netns.popns()
