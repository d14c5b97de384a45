"""The installer's questions on two consoles at once, on real pseudo-terminals."""

from __future__ import annotations

import os
import select
import termios
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from appliance.terminals import Terminals


class Pty:
    """A pseudo-terminal: the installer opens `path`, the test types into `master`."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.path = Path(os.ttyname(self.slave))
        self.seen = b""

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    def shows(self, *parts: bytes) -> bool:
        """Whether the console printed every one of `parts` (echo included), reading what
        comes for up to 30 s: the kernel hands a pty's output over asynchronously, so
        the echo of what was typed ahead and the program's output may come in any order."""
        while not all(p in self.seen for p in parts):
            if not select.select([self.master], [], [], 30)[0]:
                return False
            self.seen += os.read(self.master, 65536)
        return True

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
        with ThreadPoolExecutor(1) as pool:
            asked = pool.submit(terminals.prompt, "Controller URL []: ")
            assert screen.shows(b"Controller URL []: ") and serial.shows(b"Controller URL []: ")
            serial.type(b"https://10.0.0.1:8443\r")  # a serial console sends CR
            assert asked.result(timeout=30) == "https://10.0.0.1:8443"
            assert serial.shows(b"https://10.0.0.1:8443\r\n")  # echoed where it was typed
            assert screen.shows(b"Controller URL []: \r\n")  # the other prompt's line ends
            assert b"https://" not in screen.seen  # and it is not shown what was typed
            asked = pool.submit(terminals.prompt, "Host name []: ")
            assert screen.shows(b"Host name []: ") and serial.shows(b"Host name []: ")
            screen.type(b"node-5\n")
            assert asked.result(timeout=30) == "node-5"
        terminals.say("  checked")
        assert screen.shows(b"node-5\r\n  checked\r\n")
        assert serial.shows(b"Host name []: \r\n  checked\r\n")
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
