"""Output formats of list and show commands: `-o table|json|yaml|csv` and `-c COLUMN`.

Tables and show views are for people: sizes in binary units (KiB, MiB, GiB), absent
values as "-". JSON, YAML and CSV are for programs: exact values (sizes as the integers
the API gave). Without `-c`, JSON and YAML print the API's objects whole; with it, only
the chosen columns (lists) or fields (show), keyed by field name.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, get_args

import yaml

FORMATS = ("table", "json", "yaml", "csv")
KiB, MiB, GiB = 1024, 1024**2, 1024**3
Row = dict[str, Any]


@dataclass(frozen=True)
class Col:
    """One column of a list: its header, the field it shows (its exact value in JSON,
    YAML and CSV), how the table writes it when not the field's plain value, and, for a
    size, how many bytes one unit of the field holds (the table shows it in KiB/MiB/GiB)."""

    header: str
    key: str | None = None
    cell: Callable[[Row], Any] | None = None
    unit: int = 0

    @property
    def name(self) -> str:
        """The column's name for `-c`: its header in lower case, words joined by '-'."""
        return _norm(self.header)

    def text(self, row: Row) -> str:
        """What the table shows."""
        if self.cell is not None:
            return str(self.cell(row))
        value = row.get(self.key or "")
        if self.unit and isinstance(value, int):
            return human_size(value * self.unit)
        return "-" if value is None else str(value)

    def value(self, row: Row) -> Any:
        """What machine output holds: the field's own value, else the table's text."""
        return row.get(self.key) if self.key is not None else self.cell(row) if self.cell \
            else None


Column = Col | tuple[str, str | Callable[[Row], Any]]


def col(c: Column) -> Col:
    """A column from the short form ("HEADER", "field") or ("HEADER", function)."""
    if isinstance(c, Col):
        return c
    header, get = c
    return Col(header, key=get) if isinstance(get, str) else Col(header, cell=get)


def size(header: str, key: str, unit: int = 1) -> Col:
    """A size column: `key` counts units of `unit` bytes."""
    return Col(header, key=key, unit=unit)


def human_size(n: int | None) -> str:
    """`n` bytes in binary units: "512 B", "1.5 KiB", "10 GiB" ("-" when unknown)."""
    if n is None:
        return "-"
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            break
        value /= 1024
    if unit == "B" or value == int(value):
        return f"{value:.0f} {unit}"
    return f"{value:.1f} {unit}"


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def add_output_options(sp: argparse.ArgumentParser, columns: Sequence[Column] | None) -> None:
    """`-o/--output`, `-c/--columns` and `--json` (the same as `-o json`) on a list
    (`columns` given: what `-c` may name, checked before any request) or a show
    command (`columns` None: `-c` names fields of the object shown)."""
    what = "columns: " + ", ".join(col(c).name for c in columns) if columns is not None \
        else "fields of the object shown"
    sp.add_argument("-o", "--output", choices=FORMATS, default="table",
                    help="output format (default: table)")
    sp.add_argument("-c", "--columns", action="append", metavar="NAME[,NAME...]",
                    help=f"show only these (repeatable; {what})")
    sp.add_argument("--json", dest="output", action="store_const", const="json",
                    help="the same as -o json")
    sp.set_defaults(list_columns=[col(c) for c in columns] if columns is not None else None,
                    usage_error=sp.error)


def chosen(a: argparse.Namespace) -> list[str]:
    """The names given with `-c`, in order (commas split them too)."""
    given_ = getattr(a, "columns", None) or []
    return [n.strip() for given in given_ for n in given.split(",") if n.strip()]


def output_format(a: argparse.Namespace) -> str:
    """What `-o` asked (a namespace made without it: JSON when its `json` is true)."""
    fmt: str | None = getattr(a, "output", None)
    return fmt or ("json" if getattr(a, "json", False) else "table")


def pick_columns(a: argparse.Namespace, columns: Sequence[Column]) -> list[Col]:
    """The columns `-c` chose (all without it). An unknown name ends the command with
    argparse's usage error (exit 2), naming the valid ones."""
    cols = [col(c) for c in columns]
    by_name = {c.name: c for c in cols} | {_norm(c.key): c for c in cols if c.key}
    picked = []
    for name in chosen(a):
        if _norm(name) not in by_name:
            _usage_error(a, f"unknown column '{name}' (valid: "
                         f"{', '.join(c.name for c in cols)})")
        picked.append(by_name[_norm(name)])
    return picked or cols


def _usage_error(a: argparse.Namespace, message: str) -> None:
    error: Callable[[str], None] = getattr(a, "usage_error", None) or _exit_2
    error(message)


def _exit_2(message: str) -> None:
    print(f"vauban: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def list_filters(a: argparse.Namespace, *names: str) -> dict[str, str]:
    """The query parameters of a list from the options `names` given on the command line
    (an option's dashes become the parameter's underscores); the API checks their values
    and says which it knows."""
    return {name: str(getattr(a, name)) for name in names if getattr(a, name) is not None}


def one_of(literal: Any) -> str:
    """The values of a Literal type as words: "a, b or c"."""
    values = [str(v) for v in get_args(literal)]
    return ", ".join(values[:-1]) + " or " + values[-1]


def add_list_filters(parser: argparse.ArgumentParser, **helps: str) -> None:
    """An option --NAME per filter of a list, each with its help."""
    for name, help_ in helps.items():
        parser.add_argument(f"--{name}", help=help_)


def emit_list(a: argparse.Namespace, rows: Sequence[Row], columns: Sequence[Column]) -> int:
    """Print `rows` as `-o` asks, with the columns `-c` chose; 0."""
    fmt = output_format(a)
    cols = pick_columns(a, columns)
    if fmt == "table":
        print_table(rows, cols)
    elif fmt == "csv":
        write_csv([c.key or c.name for c in cols], [[c.value(r) for c in cols] for r in rows])
    else:
        data: Any = [{c.key or c.name: c.value(r) for c in cols} for r in rows] \
            if chosen(a) else list(rows)
        dump(data, fmt)
    return 0


def emit_show(a: argparse.Namespace, obj: Row, view: Callable[[Row], None] | None = None) -> int:
    """Print one object as `-o` asks: by default `view` (or key: value lines, nested
    parts indented); only the fields `-c` chose. An unknown field ends the command with
    argparse's usage error (exit 2), naming the valid ones. 0."""
    fmt = output_format(a)
    names = chosen(a)
    if names:
        keys = {_norm(k): k for k in obj}
        unknown = [n for n in names if _norm(n) not in keys]
        if unknown:
            _usage_error(a, f"unknown field '{unknown[0]}' (valid: {', '.join(obj)})")
        obj = {keys[_norm(n)]: obj[keys[_norm(n)]] for n in names}
    if fmt == "table":
        if view is not None and not names:
            view(obj)
        else:
            print_view(obj)
    elif fmt == "csv":
        write_csv(list(obj), [list(obj.values())])
    else:
        dump(obj, fmt)
    return 0


def dump(data: Any, fmt: str) -> None:
    """`data` as JSON (indented, keys sorted) or YAML (block style)."""
    if fmt == "yaml":
        sys.stdout.write(yaml.safe_dump(data, sort_keys=True, default_flow_style=False,
                                        allow_unicode=True))
    else:
        print(json.dumps(data, indent=2, sort_keys=True))


def write_csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A header row, then one row each; lists and objects as JSON, None as empty."""
    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow(["" if v is None else json.dumps(v, sort_keys=True)
                    if isinstance(v, dict | list) else v for v in row])


def print_table(rows: Sequence[Row], columns: Sequence[Column]) -> None:
    """Aligned columns under their headers."""
    cols = [col(c) for c in columns]
    cells = [[c.header for c in cols]] + [[c.text(r) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


_UNITS = {"_bytes": 1, "_kib": KiB, "_mib": MiB, "_gib": GiB}


def view_lines(obj: Row, indent: int = 0) -> list[str]:
    """`obj` as "key: value" lines for people: nested objects and lists of objects
    indented under their key, sizes (fields ending in _bytes, _kib, _mib, _gib) in
    binary units, absent values as "-"."""
    pad = " " * indent
    lines: list[str] = []
    for key, value in obj.items():
        if isinstance(value, dict) and value:
            lines.append(f"{pad}{key}:")
            lines.extend(view_lines(value, indent + 2))
        elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
            lines.append(f"{pad}{key}:")
            for item in value:
                sub = view_lines(item, indent + 4) if isinstance(item, dict) \
                    else [" " * (indent + 4) + _scalar(key, item)]
                lines.append(f"{pad}  - {sub[0].lstrip()}" if sub else f"{pad}  -")
                lines.extend(sub[1:])
        else:
            lines.append(f"{pad}{key}: {_scalar(key, value)}")
    return lines


def field_text(key: str, value: Any) -> str:
    """One field's value for people (see view_lines)."""
    return _scalar(key, value)


def _scalar(key: str, value: Any) -> str:
    if value is None or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    unit = next((u for suffix, u in _UNITS.items() if key.endswith(suffix)), 0)
    if unit and isinstance(value, int):
        return human_size(value * unit)
    return str(value)


def print_view(obj: Row) -> None:
    """`obj` as view_lines."""
    for line in view_lines(obj):
        print(line)
