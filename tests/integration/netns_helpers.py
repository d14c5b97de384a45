"""Shared by the tests that build hosts out of network namespaces."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll `check` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)  # polling kernel state another process changes


def lookup(ipr: Any, ifname: str) -> int:
    """The index of `ifname` in the namespace of `ipr`; AssertionError if there is none."""
    found = ipr.link_lookup(ifname=ifname)
    assert found, f"no interface {ifname}"
    return int(found[0])
