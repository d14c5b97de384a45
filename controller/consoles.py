"""The plumbing of a VM console: websockets spliced to each other through a unix socket.

A console has two legs: the user's websocket (browser or CLI) and the websocket its VM's
agent dials back with. The two may land in different worker processes (or controllers on
one host), so they meet through a unix socket that the process holding the user's leg
listens on, in the region's data directory (`rendezvous_path`, named by the session):
whichever process takes the agent's leg connects to it. One path for one process or many.

Bytes are relayed as they come, both ways, in chunks of at most CHUNK; each direction
holds at most one chunk in flight (a slow reader slows its writer, nothing piles up here).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Response, request
from simple_websocket import ConnectionClosed, Server

from agent.consoles import end_reader

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
# larger than a TLS record (16 KiB): one read takes a whole record, so no decrypted byte
# waits in the TLS layer unseen by the poll that paces the pings
RECEIVE_BYTES = 64 * 1024
PING_S = 15.0  # a peer that does not answer a ping within this is gone
MAX_MESSAGE = 1024 * 1024  # a single websocket message from a peer
STOP_CHECK_S = 5.0  # how often a blocked receive looks whether the other direction ended


def rendezvous_dir(data_dir: Path) -> Path:
    """Where the unix sockets of consoles waiting for their agent are (made, mode 0700)."""
    path = data_dir / "consoles"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def rendezvous_path(data_dir: Path, session_id: str) -> Path:
    return rendezvous_dir(data_dir) / f"{session_id}.sock"


_folders: dict[Path, int] = {}
_folders_lock = threading.Lock()


def _address(path: Path) -> str:
    """`path` as a unix socket address that fits the 107 bytes of sun_path however long
    the data folder's name is: through this process's descriptor of the socket's folder."""
    with _folders_lock:
        fd = _folders.get(path.parent)
        if fd is None:
            fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            _folders[path.parent] = fd
    return f"/proc/self/fd/{fd}/{path.name}"


def sweep_rendezvous(data_dir: Path, older_than_s: float) -> int:
    """Remove the socket files of consoles older than `older_than_s` (a listener lives at
    most the agent's answer time: older files are a crashed process's); how many."""
    found = 0
    cutoff = time.time() - older_than_s
    for path in rendezvous_dir(data_dir).glob("*.sock"):
        try:
            if path.lstat().st_mtime < cutoff:
                path.unlink()
                found += 1
        except FileNotFoundError:
            continue  # its listener removed it meanwhile
    return found


def listen(path: Path) -> socket.socket:
    """A unix socket listening at `path` (a stale file there is replaced)."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(_address(path))
        sock.listen(1)
    except OSError:
        sock.close()
        raise
    return sock


def accept_within(listener: socket.socket, path: Path, timeout_s: float) -> socket.socket | None:
    """The first connection to `listener` within `timeout_s`, or None; the listener is closed
    and its file removed either way."""
    try:
        listener.settimeout(timeout_s)
        conn, _ = listener.accept()
        conn.settimeout(None)
        return conn
    except TimeoutError:
        return None
    finally:
        listener.close()
        path.unlink(missing_ok=True)


def connect(path: Path) -> socket.socket:
    """A connection to the user's leg waiting at `path`; OSError when it is gone."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(_address(path))
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class Traffic:
    """What a splice carried, and how the websocket side ended (None: it did not)."""

    from_ws: int = 0
    to_ws: int = 0
    ws_code: int | None = None
    ws_message: str | None = None


def splice(ws: Any, sock: socket.socket,
           on_ws_end: Callable[[Traffic], None] = lambda _t: None) -> Traffic:
    """Relay `ws` <-> `sock` until either ends; returns what went through. When the websocket
    ends, `on_ws_end` runs before `sock` is shut for writing (its peer then sees the end);
    when `sock` ends, this returns and the caller closes `ws` (with its reason)."""
    traffic, done = Traffic(), threading.Event()

    def ws_to_sock() -> None:
        try:
            while not done.is_set():
                data = ws.receive(timeout=STOP_CHECK_S)
                if data is None:
                    continue  # nothing within the check interval (an ended ws raises)
                chunk = data.encode() if isinstance(data, str) else bytes(data)
                sock.sendall(chunk)
                traffic.from_ws += len(chunk)
        except ConnectionClosed as e:
            traffic.ws_code, traffic.ws_message = e.reason, e.message
            on_ws_end(traffic)
        except OSError:
            pass  # the socket's side ended: the other direction sees it too
        finally:
            done.set()
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    pump = threading.Thread(target=ws_to_sock, name="console-in", daemon=True)
    pump.start()
    try:
        while True:
            data = sock.recv(CHUNK)
            if not data:
                break
            ws.send(data)
            traffic.to_ws += len(data)
    except (ConnectionClosed, OSError):
        pass
    done.set()
    pump.join()
    sock.close()
    return traffic


class _Handled(Response):
    """The answer once a websocket ran: the connection was the handler's; nothing more is
    written (gunicorn is told so by StopIteration, as flask-sock does)."""

    mode = ""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.mode == "gunicorn":
            raise StopIteration()
        if self.mode == "werkzeug":
            return super().__call__(*args, **kwargs)
        return []


def handshake_refusal() -> str | None:
    """Why this request is no websocket opening (RFC 6455, 4.2.1) we can accept, or None:
    checked before a ticket is spent or a session claimed, so a bad one spends nothing."""
    headers = request.headers
    if headers.get("Upgrade", "").strip().lower() != "websocket":
        return "the request does not ask for a websocket (Upgrade: websocket)"
    if headers.get("Sec-WebSocket-Version", "").strip() != "13":
        return "only websocket version 13 is spoken (Sec-WebSocket-Version)"
    try:
        key = base64.b64decode(headers.get("Sec-WebSocket-Key", ""), validate=True)
    except binascii.Error:
        key = b""
    if len(key) != 16:
        return "Sec-WebSocket-Key must be 16 bytes in base64"
    return None


def open_websocket() -> Server:
    """The request's websocket, accepted (the handshake answered); raises if it cannot be."""
    raw = request.environ.get("gunicorn.socket")
    if raw is not None:
        raw.settimeout(None)  # idle consoles are normal: pings tell a live peer from a gone one
    # "binary": the subprotocol older noVNC releases ask for; none is needed
    return Server(request.environ, subprotocols=["binary"], receive_bytes=RECEIVE_BYTES,
                  ping_interval=PING_S, max_message_size=MAX_MESSAGE)


def run_websocket(ws: Server, run: Callable[[Server], None]) -> Response:
    """Run `run(ws)`; the websocket is closed (1000) afterwards unless `run` closed it."""
    try:
        run(ws)
    except ConnectionClosed:
        pass
    close(ws)
    end_reader(ws)
    answer = _Handled()
    answer.mode = ws.mode
    return answer


def serve_websocket(run: Callable[[Server], None]) -> Response:
    """Accept the request's websocket and run `run(ws)` on it (see run_websocket). Call it
    only once every check passed: what is refused before is answered in plain HTTP."""
    return run_websocket(open_websocket(), run)


def close(ws: Server, code: int | None = None, message: str | None = None) -> None:
    """Close `ws` with `code` and `message` (the message cut to the 123 bytes a close frame
    holds); nothing if it is closed already."""
    if message is not None:
        message = message.encode()[:123].decode(errors="ignore")
    try:
        ws.close(code, message)
    except (ConnectionClosed, OSError):
        pass
