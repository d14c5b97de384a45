"""Tables, JSON and progress lines for the CLI."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from controller.cli.formats import Column as Column
from controller.cli.formats import print_table as print_table

PROJECT_HELP = "its project (name or id); default: yours if you have one, else 'default'"


def project_cell(row: dict[str, Any]) -> str:
    """An object's project for a table; a public image or a provider network is shared."""
    return row.get("project") or "(shared)"


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def add_wait_options(sp: argparse.ArgumentParser, until: str = "it is done") -> None:
    """`--wait` (the default: follow it, with a progress bar on a terminal) and
    `--no-wait` (return once the region accepted it), as `a.wait`."""
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--wait", dest="wait", action="store_true", default=True,
                   help=f"wait until {until}, showing progress on a terminal (the default)")
    g.add_argument("--no-wait", dest="wait", action="store_false",
                   help="return once the region accepted it (prints the operation to follow)")


def progress_line(label: str, percent: int) -> None:
    """A progress bar on stderr, redrawn in place on a terminal."""
    if not sys.stderr.isatty():
        return
    filled = percent * 30 // 100
    sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {percent:3d}%")
    sys.stderr.flush()


def end_progress() -> None:
    """Finish a progress bar's line (nothing was drawn when stderr is not a terminal)."""
    if sys.stderr.isatty():
        sys.stderr.write("\n")
