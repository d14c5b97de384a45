"""The installer's questions on every console an operator may be at.

A server is installed from its screen (tty1: VGA, or the BMC's remote screen) or from
its serial port (serial-over-LAN, or a QEMU test). Each question is written to every
console that opens; the first line typed on any of them answers it. The consoles are
put in line mode (the kernel edits the line and echoes it) whatever a getty left them in.
"""

from __future__ import annotations

import os
import select
import termios
from collections.abc import Sequence
from pathlib import Path

MAX_LINE = 4096  # the kernel's line buffer holds 4095 characters and the newline


def _line_mode(fd: int) -> None:
    """Canonical input with echo, CR read as NL, NL written as CR NL; nothing for a file
    that is not a terminal (a test's pipe)."""
    try:
        iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    except termios.error:
        return
    iflag = (iflag | termios.ICRNL) & ~(termios.IGNCR | termios.INLCR)
    oflag |= termios.OPOST | termios.ONLCR
    lflag |= termios.ICANON | termios.ECHO | termios.ECHOE
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])


class Terminals:
    """The consoles of `paths` that could be opened (never as a controlling terminal)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.fds: dict[int, Path] = {}
        for path in paths:
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
            except OSError:
                continue  # no such port, or one without its device: the others remain
            _line_mode(fd)
            self.fds[fd] = path

    def close(self) -> None:
        for fd in list(self.fds):
            self._drop(fd)

    def _drop(self, fd: int) -> None:
        del self.fds[fd]
        os.close(fd)

    def say(self, text: str) -> None:
        """Write `text` and a newline to every console; one that fails is dropped."""
        self._write((text + "\n").encode(errors="replace"))

    def _write(self, data: bytes) -> None:
        for fd in list(self.fds):
            try:
                os.write(fd, data)
            except OSError:
                self._drop(fd)

    def prompt(self, question: str) -> str:
        """The first line typed on any console after `question` was written to all, without
        its line end. EOFError when no console is left to read from."""
        self._write(question.encode(errors="replace"))
        while self.fds:
            ready, _, _ = select.select(list(self.fds), [], [])
            for fd in ready:
                try:
                    data = os.read(fd, MAX_LINE)
                except OSError:
                    data = b""
                if not data:  # hung up
                    self._drop(fd)
                    continue
                self._write_others(fd, b"\n")  # the others' prompts end their line
                return data.decode(errors="replace").rstrip("\r\n")
        raise EOFError("no console is left to read answers from")

    def _write_others(self, source: int, data: bytes) -> None:
        for fd in list(self.fds):
            if fd != source:
                try:
                    os.write(fd, data)
                except OSError:
                    self._drop(fd)
