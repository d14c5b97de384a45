"""Node failures in words, for `vauban node show` and `vauban vm show`."""

from __future__ import annotations

from typing import Any

_WHAT = {"vm": "VM", "network": "network", "firewall": "firewall", "volume": "volume",
         "image": "image"}


def failure_line(f: dict[str, Any]) -> str:
    """One failure: what failed, why, and whether the agent still tries."""
    tries = f"{f['attempts']} attempt{'s' if f['attempts'] != 1 else ''} since {f['since']}"
    if f["final"]:
        outlook = "given up until the request changes" if f["retryable"] \
            else "not retryable: fix the cause, then ask again"
    else:
        outlook = f"retrying at {f['next_retry_at']}"
    what = _WHAT.get(f["kind"], f["kind"])
    return f"{what} {f['object_id']}: {f['action']} failed: {f['message']} ({tries}; {outlook})"


def print_failures(failures: list[dict[str, Any]], heading: str) -> None:
    """A heading and one line per failure; nothing when there are none."""
    if not failures:
        return
    print(f"{heading}:")
    for f in failures:
        print(f"  {failure_line(f)}")
