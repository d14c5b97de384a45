"""The HTTP head reader and the tunnelled console of the XAPI client, on socket pairs."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from agent.drivers.xapi.console import TlsConsole
from agent.drivers.xapi.transport import read_head, session_cookie


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    with a, b:
        yield a, b


def test_the_head_is_read_and_what_follows_it_kept(
        pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    theirs.sendall(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nRFB 003.008\n")
    assert read_head(ours) == (200, "OK", b"RFB 003.008\n")


@pytest.mark.parametrize(("answer", "message"), [
    (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP answer"),
    (b"HTTP/1.0 200", "ended before"),
    (b"HTTP/1.0 200 OK\r\n" + b"X: y\r\n" * 4000, "longer than"),
])
def test_what_is_no_http_head_is_refused(pair: tuple[socket.socket, socket.socket],
                                         answer: bytes, message: str) -> None:
    ours, theirs = pair

    def send() -> None:
        theirs.sendall(answer)
        theirs.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send)
    sender.start()
    with pytest.raises(ConnectionError, match=message):
        read_head(ours)
    sender.join()


def test_the_console_gives_the_bytes_that_came_with_the_head_first(
        pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    console = TlsConsole(ours, b"RFB 003.008\n")
    theirs.sendall(b"more")
    assert console.recv(4) == b"RFB "
    assert console.recv(100) == b"003.008\n"
    assert console.recv(100) == b"more"
    console.sendall(b"typed")
    assert theirs.recv(100) == b"typed"


def test_closing_the_console_ends_a_recv_waiting_in_another_thread(
        pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _ = pair
    console = TlsConsole(ours)
    ended: list[Any] = []
    waiter = threading.Thread(target=lambda: ended.append(_recv(console)))
    waiter.start()
    console.close()
    waiter.join()
    assert ended == [b""] or isinstance(ended[0], OSError)


def _recv(console: TlsConsole) -> bytes | OSError:
    try:
        return console.recv(1)
    except OSError as e:
        return e


def test_the_session_travels_as_a_cookie() -> None:
    assert session_cookie("OpaqueRef:abc") == "session_id=OpaqueRef:abc"
