"""Undo steps for multi-step host changes.

Each step registers its undo as soon as it succeeds; if the block fails, the
undo steps run in reverse order; `success()` at the end cancels them.

    with Reverter() as revert:
        make_disk(); revert.add(lambda: remove_disk())
        define_vm(); revert.add(lambda: undefine_vm())
        revert.success()
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType

log = logging.getLogger(__name__)


class Reverter:
    """Collects undo callables and runs them in reverse unless success() was called."""

    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], object]]] = []
        self._done = False

    def add(self, undo: Callable[[], object], what: str = "") -> None:
        """Register the undo of a step that just succeeded."""
        self._undo.append((what or getattr(undo, "__name__", "step"), undo))

    def success(self) -> None:
        """Keep every change: the undo steps will not run."""
        self._done = True

    def fail(self) -> None:
        """Run every undo step, newest first; a failing undo is logged and the rest still run."""
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
            except Exception:  # noqa: BLE001 - one failed undo must not stop the others
                log.exception("revert step %r failed", what)

    def __enter__(self) -> Reverter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._done:
            self.fail()
