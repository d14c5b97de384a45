"""The installer's questions on two consoles at once, on real pseudo-terminals."""

from __future__ import annotations

import os
import select
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.terminals import Terminals


class Pty:
    """A pseudo-terminal: the installer opens `path`, the test types into `master`."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.path = Path(os.ttyname(self.slave))

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    def shown(self) -> bytes:
        """What the console printed so far (echo included)."""
        out = b""
        while select.select([self.master], [], [], 0)[0]:
            out += os.read(self.master, 65536)
        return out

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def ptys() -> Iterator[tuple[Pty, Pty]]:
    screen, serial = Pty(), Pty()
    yield screen, serial
    screen.close()
    serial.close()


def test_a_question_is_shown_on_both_and_answered_on_either(ptys: tuple[Pty, Pty]) -> None:
    screen, serial = ptys
    terminals = Terminals([screen.path, serial.path])
    try:
        serial.type(b"https://10.0.0.1:8443\r")  # typed ahead; a serial console sends CR
        assert terminals.prompt("Controller URL []: ") == "https://10.0.0.1:8443"
        assert screen.shown() == b"Controller URL []: \r\n"
        assert serial.shown() == b"https://10.0.0.1:8443\r\nController URL []: "  # echoed
        screen.type(b"node-5\n")
        assert terminals.prompt("Host name []: ") == "node-5"
        terminals.say("  checked")
        assert b"checked\r\n" in screen.shown() and b"checked\r\n" in serial.shown()
    finally:
        terminals.close()


def test_a_console_left_raw_by_a_getty_is_put_back_in_line_mode(ptys: tuple[Pty, Pty]) -> None:
    screen, _ = ptys
    attrs = termios.tcgetattr(screen.slave)
    attrs[0] &= ~termios.ICRNL
    attrs[3] &= ~(termios.ICANON | termios.ECHO)
    termios.tcsetattr(screen.slave, termios.TCSANOW, attrs)
    terminals = Terminals([screen.path])
    try:
        screen.type(b"yes\r")
        assert terminals.prompt("Wipe? ") == "yes"
    finally:
        terminals.close()


def test_missing_consoles_are_skipped_and_none_at_all_is_end_of_input(
        ptys: tuple[Pty, Pty], tmp_path: Path) -> None:
    screen, _ = ptys
    terminals = Terminals([tmp_path / "ttyS9", screen.path])
    try:
        assert list(terminals.fds.values()) == [screen.path]
    finally:
        terminals.close()
    with pytest.raises(EOFError, match="no console is left"):
        Terminals([tmp_path / "ttyS9"]).prompt("Controller URL []: ")
