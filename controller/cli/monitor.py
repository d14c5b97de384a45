"""`vauban monitor`: the region's events as they come, one line each (docs/events.md)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from controller.cli.client import ApiError, Client, StreamItem
from controller.services.events import TYPES

KINDS = sorted(TYPES)


def describe(event: dict[str, Any]) -> str:
    """One line for an event: time, type, project, object, and what changed in words."""
    obj = event.get("object") or {}
    data = event.get("data") or {}
    at = str(event.get("at") or "")[11:19] or "--:--:--"
    where = event.get("project") or "-"
    said = _summary(str(event.get("type", "")), data)
    name = obj.get("name") or obj.get("id") or ""
    return f"{at}  {event.get('type', ''):<24} {where:<12} {name}  {said}".rstrip()


def _summary(type_: str, data: dict[str, Any]) -> str:
    if type_ == "stream.reset":
        return f"({data.get('reason', '')}; refetch what you show)"
    if type_.startswith("operation."):
        error = f": {data['error']}" if data.get("error") else ""
        return f"{data.get('kind', '')} {data.get('state', '')} {data.get('progress', 0)}%{error}"
    if type_.startswith("vm."):
        return f"{data.get('state', '')} on {data.get('node') or '-'}" + \
            (f": {data['error']}" if data.get("error") else "")
    if type_.startswith("node."):
        return str(data.get("state", ""))
    return ""


def cmd_monitor(c: Client, a: argparse.Namespace) -> int:
    """Print events until Ctrl-C (or `--count` of them); a broken stream is resumed from
    the last event printed, losing none."""
    show: Callable[[dict[str, Any]], None] = \
        (lambda e: print(json.dumps(e, sort_keys=True), flush=True)) if a.json \
        else (lambda e: print(describe(e), flush=True))
    last: int | None = a.after
    printed = 0
    delay = 1.0
    try:
        while a.count is None or printed < a.count:
            try:
                for item in c.events(a.type, last):
                    last = item.id if item.id is not None else last
                    if _printable(item):
                        assert item.data is not None
                        show(item.data)
                        printed += 1
                        if a.count is not None and printed >= a.count:
                            return 0
                delay = 1.0
            except ApiError as e:
                if e.status != 0:
                    raise
                print(f"vauban: {e}; reconnecting in {delay:.0f} s", file=sys.stderr)
                time.sleep(delay)  # the controller is away: try again, less and less often
                delay = min(delay * 2, 30.0)
    except KeyboardInterrupt:
        return 0
    return 0


def _printable(item: StreamItem) -> bool:
    return item.type is not None and item.data is not None


def monitor_commands(sub: Any, add: Callable[..., Any]) -> None:
    mon = add(sub, "monitor", cmd_monitor, "print the region's events as they come, until "
              "Ctrl-C (only what you may see)", json_=True)
    mon.add_argument("--type", action="append", choices=KINDS, metavar="KIND",
                     help=f"only events of this kind (repeatable): {', '.join(KINDS)}")
    mon.add_argument("--after", type=int, metavar="ID",
                     help="start after this event id (default: from now)")
    mon.add_argument("--count", type=int, metavar="N", help="stop after N events")
