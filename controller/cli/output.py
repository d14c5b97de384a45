"""Tables, JSON and progress lines for the CLI."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

Column = tuple[str, str | Callable[[dict[str, Any]], Any]]
PROJECT_HELP = "its project (name or id); default: yours if you have one, else 'default'"


def project_cell(row: dict[str, Any]) -> str:
    """An object's project for a table; a public image or a provider network is shared."""
    return row.get("project") or "(shared)"


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> None:
    cells = [[h for h, _ in columns]]
    for r in rows:
        cells.append([str(get(r) if callable(get) else r.get(get, ""))
                      for _, get in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


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
