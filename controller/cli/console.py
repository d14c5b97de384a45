"""`vauban vm console NAME`: the VM's serial console, live, through the controller.

With a terminal: raw mode (every key goes to the guest), Ctrl-] ends it. Without one
(scripts, tests): stdin goes to the guest and the guest's output to stdout, until stdin
ends or the controller closes the console.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import sys
import termios
import threading
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import simple_websocket
from simple_websocket.ws import Base

from controller.cli.client import ApiError, Client, Settings

ESCAPE = b"\x1d"  # Ctrl-]
NORMAL_CLOSE = (1000, 1005)  # ended normally, or with no code


def websocket_url(settings: Settings, path: str) -> str:
    """wss://<controller><path> for an https controller URL (ws:// for http)."""
    parts = urlsplit(settings.url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{path}"


def open_console(settings: Settings, path: str) -> simple_websocket.Client:
    """The console's websocket, with the CLI's bearer token, the controller's certificate
    verified as the CLI's other calls verify it (VAUBAN_CA_FILE, else the system's CAs)."""
    context = ssl.create_default_context(cafile=settings.ca_file) if settings.ca_file \
        else ssl.create_default_context()
    headers = {"Authorization": f"Bearer {settings.token}"} if settings.token else {}
    try:
        return simple_websocket.Client.connect(
            websocket_url(settings, path), headers=headers, ssl_context=context,
            receive_bytes=64 * 1024, ping_interval=15.0)
    except simple_websocket.ConnectionError as e:
        raise ApiError(e.status_code or 0, f"the controller refused the console "
                       f"({e.status_code})") from e


@contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def cmd_vm_console(c: Client, a: argparse.Namespace) -> int:
    ticket = c.post(f"/instances/{a.name}/consoles", {"kind": "serial"})
    ws = open_console(c.settings, ticket["websocket"])
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"serial console of {a.name}; Ctrl-] ends it", file=sys.stderr, flush=True)
        with raw_terminal(sys.stdin.fileno()):
            ended = relay(ws, interactive=True)
        print(file=sys.stderr)
    else:
        ended = relay(ws, interactive=False)
    code, message = ended
    if code is not None and code not in NORMAL_CLOSE:
        print(f"vauban: console closed: {message or code}", file=sys.stderr)
        return 1
    return 0


def relay(ws: simple_websocket.Client, *, interactive: bool) -> tuple[int | None, str | None]:
    """stdin to the console, the console to stdout, until stdin ends (or Ctrl-] when
    `interactive`) or the console closes; returns how the controller closed it (None: we
    did)."""
    done = threading.Event()
    closed: list[tuple[int | None, str | None]] = []

    def from_console() -> None:
        out = sys.stdout.buffer
        try:
            while True:
                data = ws.receive()
                if data is None:
                    continue
                out.write(data.encode() if isinstance(data, str) else data)
                out.flush()
        except simple_websocket.ConnectionClosed as e:
            closed.append((e.reason, e.message))
        except OSError:
            closed.append((None, None))
        finally:
            done.set()

    def to_console() -> None:
        fd = sys.stdin.fileno()
        try:
            while not done.is_set():
                data = os.read(fd, 4096)
                if not data:
                    break
                if interactive and ESCAPE in data:
                    ws.send(data[:data.index(ESCAPE)])
                    break
                ws.send(data)
        except (simple_websocket.ConnectionClosed, OSError):
            pass
        finally:
            done.set()

    threading.Thread(target=from_console, daemon=True).start()
    threading.Thread(target=to_console, daemon=True).start()  # may stay blocked in read
    done.wait()
    end(ws)
    return closed[0] if closed else (None, None)


def end(ws: simple_websocket.Client, wait_s: float = 5.0) -> None:
    """Close `ws` (1000) and wait for its reading thread to end. Not Client.close: it closes
    the socket under the reading thread, whose read may then take the bytes of this
    process's next connection, given the same descriptor number."""
    try:
        Base.close(ws)
    except (simple_websocket.ConnectionClosed, OSError):
        pass
    ws.thread.join(wait_s)
    if ws.thread.is_alive():
        try:
            ws.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        ws.thread.join()
