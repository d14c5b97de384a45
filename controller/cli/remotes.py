"""Named remotes: the regions the CLI knows, each with its URL, CA file and token.

They are kept in one file, `$XDG_CONFIG_HOME/vauban/cli.json` (default
`~/.config/vauban/cli.json`; `VAUBAN_CONFIG` names another), readable by its owner
only (0600, in a 0700 folder), as {"current": NAME, "remotes": {NAME: {"url",
"token", "ca_file"}}}. The single login that older versions saved there ({"url",
"token", "ca_file"}) reads as the remote "default", the current one.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from controller.cli.formats import Col, emit_list

DEFAULT_URL = "https://127.0.0.1:8443"
DEFAULT_NAME = "default"


class RemoteError(ValueError):
    """A remote named that is not known, or added twice."""


def config_file() -> Path:
    """Where the remotes are kept (read at each call: tests and scripts set the
    environment)."""
    if os.environ.get("VAUBAN_CONFIG"):
        return Path(os.environ["VAUBAN_CONFIG"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or "~/.config"
    return Path(base).expanduser() / "vauban" / "cli.json"


@dataclass
class Remote:
    url: str
    token: str | None = None
    ca_file: str | None = None


@dataclass
class Store:
    """The remotes and which one is current; `load` then `save` to change them."""

    current: str | None = None
    remotes: dict[str, Remote] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> Store:
        """The saved remotes (none when the file does not exist)."""
        path = path or config_file()
        if not path.exists():
            return cls()
        try:
            raw: dict[str, Any] = json.loads(path.read_text() or "{}")
        except ValueError as e:
            raise RemoteError(f"{path} is not the CLI's saved remotes ({e}): mend or remove "
                              "it") from e
        if "remotes" not in raw:  # the single login of older versions
            if not raw.get("url"):
                return cls()
            return cls(DEFAULT_NAME, {DEFAULT_NAME: Remote(raw["url"], raw.get("token"),
                                                           raw.get("ca_file"))})
        remotes = {name: Remote(r["url"], r.get("token"), r.get("ca_file"))
                   for name, r in raw["remotes"].items()}
        current = raw.get("current")
        return cls(current if current in remotes else None, remotes)

    def save(self, path: Path | None = None) -> None:
        """Write the file whole, mode 0600 (also when it existed with a wider mode)."""
        path = path or config_file()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a file made earlier with a wider mode holds the tokens too
        with os.fdopen(fd, "w") as f:
            json.dump({"current": self.current,
                       "remotes": {n: asdict(r) for n, r in sorted(self.remotes.items())}},
                      f, indent=1)

    def get(self, name: str) -> Remote:
        """The remote `name`; RemoteError naming the known ones if there is none."""
        if name not in self.remotes:
            known = ", ".join(sorted(self.remotes)) or "none yet: vauban remote add NAME URL"
            raise RemoteError(f"no remote named '{name}' (known: {known})")
        return self.remotes[name]

    def chosen(self, name: str | None) -> tuple[str | None, Remote | None]:
        """The remote `name` (RemoteError if unknown), else the current one, else none."""
        if name is not None:
            return name, self.get(name)
        if self.current is not None:
            return self.current, self.remotes[self.current]
        return None, None


def cmd_remote_add(_c: Any, a: argparse.Namespace) -> int:
    store = Store.load()
    if a.name in store.remotes:
        raise RemoteError(f"a remote named '{a.name}' exists already (vauban remote remove "
                          f"{a.name} first)")
    store.remotes[a.name] = Remote(a.url, None, os.path.abspath(a.ca_file) if a.ca_file
                                   else None)
    store.current = store.current or a.name
    store.save()
    print(f"remote {a.name} added ({a.url})" + (", now the current one"
                                                 if store.current == a.name else "")
          + f"; log in with: vauban --remote {a.name} login")
    return 0


def cmd_remote_switch(_c: Any, a: argparse.Namespace) -> int:
    store = Store.load()
    store.get(a.name)
    store.current = a.name
    store.save()
    print(f"remote {a.name} is now the current one")
    return 0


def cmd_remote_remove(_c: Any, a: argparse.Namespace) -> int:
    store = Store.load()
    store.get(a.name)
    del store.remotes[a.name]
    if store.current == a.name:
        store.current = None
    store.save()
    print(f"remote {a.name} removed" + (" (no remote is current now: vauban remote switch "
                                        "NAME)" if store.current is None and store.remotes
                                        else ""))
    return 0


REMOTE_COLUMNS = [Col("NAME", "name"), Col("URL", "url"),
                  Col("CURRENT", "current", cell=lambda r: "*" if r["current"] else ""),
                  Col("LOGGED IN", "logged_in", cell=lambda r: "yes" if r["logged_in"] else "no"),
                  Col("CA FILE", "ca_file")]


def cmd_remote_list(_c: Any, a: argparse.Namespace) -> int:
    store = Store.load()
    rows = [{"name": n, "url": r.url, "ca_file": r.ca_file, "current": n == store.current,
             "logged_in": r.token is not None}  # never the token itself
            for n, r in sorted(store.remotes.items())]
    return emit_list(a, rows, REMOTE_COLUMNS)


def remote_commands(sub: Any, add: Callable[..., Any]) -> None:
    rm = sub.add_parser("remote", help="the regions this CLI knows (named remotes)") \
        .add_subparsers(dest="cmd", required=True)
    ra = add(rm, "add", cmd_remote_add, "add a region under a name (the first one added "
             "becomes the current one)")
    ra.add_argument("name")
    ra.add_argument("url", help="the controller, e.g. https://region.example:8443")
    ra.add_argument("--ca-file", help="region CA certificate to verify the controller")
    add(rm, "switch", cmd_remote_switch, "make a remote the current one").add_argument("name")
    add(rm, "list", cmd_remote_list, "the remotes, the current one marked",
        columns=REMOTE_COLUMNS)
    add(rm, "remove", cmd_remote_remove, "forget a remote and its token").add_argument("name")
