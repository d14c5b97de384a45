"""Running the system's tools, and speaking to the operator on the console.

Every program the appliance runs goes through one `Runner` (tests pass a fake), and
every line meant for the operator goes through one `Console`, which also copies it
to the first serial port: a server in a rack is often watched through its BMC's
serial-over-LAN, a QEMU test through `-serial`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, TextIO

SERIAL = Path("/dev/ttyS0")


class CommandError(Exception):
    """A program failed; the message names it and quotes what it printed."""

    def __init__(self, argv: Sequence[str], returncode: int, output: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output.strip()
        tail = " | ".join(self.output.splitlines()[-5:])
        super().__init__(f"{' '.join(self.argv)} exited {returncode}" + (f": {tail}" if tail
                                                                           else ""))


class Runner(Protocol):
    """Runs a program and returns its standard output; CommandError when it fails."""

    def __call__(self, argv: Sequence[str], *, input_text: str | None = None) -> str: ...


def run(argv: Sequence[str], *, input_text: str | None = None, timeout: float = 1800.0) -> str:
    """Run `argv` and return its standard output. CommandError when it exits non-zero
    or cannot be started (output then holds stderr, or why it could not start)."""
    try:
        done = subprocess.run(list(argv), input=input_text, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CommandError(argv, -1, str(e)) from e
    if done.returncode != 0:
        raise CommandError(argv, done.returncode, done.stderr or done.stdout)
    return done.stdout


def run_status(argv: Sequence[str]) -> tuple[int, str]:
    """Run `argv`; its exit status and standard output (-1 when it cannot be started)."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=600,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return -1, str(e)
    return done.returncode, done.stdout


class Console:
    """Lines for the operator: to `out` (the unit's terminal) and to the serial port
    when there is one that is not already `out`. A port that cannot be written is
    skipped: the message still reaches `out` and the journal."""

    def __init__(self, out: TextIO | None = None, serial: Path | None = SERIAL) -> None:
        self.out = out or sys.stdout
        self.serial = serial if serial is not None and self._distinct(serial) else None

    def _distinct(self, serial: Path) -> bool:
        if not serial.exists():
            return False
        try:
            return Path(self.out.name).resolve() != serial.resolve()
        except (AttributeError, TypeError, OSError):
            return True

    def say(self, text: str) -> None:
        """Print `text` (one or more lines) everywhere the operator may be looking."""
        self.out.write(text + "\n")
        self.out.flush()
        if self.serial is not None:
            data = (text.replace("\n", "\r\n") + "\r\n").encode(errors="replace")
            try:
                # O_NOCTTY: the port must never become this process's controlling terminal
                # O_NONBLOCK: opening a port without carrier would wait for one; writes block
                fd = os.open(self.serial, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
                try:
                    os.set_blocking(fd, True)
                    os.write(fd, data)
                finally:
                    os.close(fd)
            except OSError:
                self.serial = None
