"""The controller's process-wide state: settings, database sessions, CA, and change notices."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from agent.protocol import StorageSettings
from controller.config import ControllerConfig
from controller.pki import RegionCA


class ChangeNotifier:
    """Wakes long-polling agents as soon as a desired state changes in this process.

    Waiters also re-check on a short period, so changes made by another
    controller process (same database) are seen too, only a little later.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._version = 0

    def notify(self) -> None:
        with self._cond:
            self._version += 1
            self._cond.notify_all()

    def wait_until(self, ready: Callable[[], bool], timeout: float, recheck: float = 1.0) -> bool:
        """Return True as soon as `ready()` holds, False once `timeout` seconds passed without."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                seen = self._version
            if ready():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._cond:
                if self._version == seen:
                    self._cond.wait(min(left, recheck))


@dataclass
class Region:
    config: ControllerConfig
    engine: Engine
    sessions: sessionmaker[Session]
    ca: RegionCA
    notifier: ChangeNotifier
    ca_sha256: str
    storage: StorageSettings
