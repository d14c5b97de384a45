"""Blocking work leaves the event loop when the controller serves with gevent."""

from __future__ import annotations

import subprocess
import sys
import threading

from controller.offload import off_loop

PATCHED = """
from gevent import monkey
monkey.patch_all()
import threading
from controller.offload import off_loop
loop = threading.get_native_id()
worker = off_loop(threading.get_native_id)
print(loop != worker)
"""


def test_without_gevent_the_work_runs_in_place() -> None:
    assert off_loop(threading.get_native_id) == threading.get_native_id()


def test_under_gevent_the_work_runs_on_another_os_thread() -> None:
    out = subprocess.run([sys.executable, "-c", PATCHED], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "True", out.stderr


def test_exceptions_come_back_to_the_caller() -> None:
    def boom() -> None:
        raise ValueError("refused")

    try:
        off_loop(boom)
    except ValueError as e:
        assert str(e) == "refused"
    else:
        raise AssertionError("the exception was lost")
