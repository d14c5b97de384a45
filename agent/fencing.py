"""Self-fence: a node that hears neither the controller nor its storage stops its VMs.

The controller counts a node lost, and may restart its HA VMs elsewhere, only once both
its agent heartbeat and its storage heartbeat are stale (docs/design/ha-plan.md 3.1).
The node judges the same two facts from its side, earlier (controller.config's fence
timing rule), so that a VM never runs twice: once it has had no answer from the
controller and no successful storage heartbeat write for `fence_after_s`, or at once when
the storage refuses its heartbeat because its Ceph client is blocklisted, it destroys
every domain of its own (no undefine, no disk is touched), refuses every start and reports
when it did so (`NodeStatus.self_fenced_at`) until the controller clears that fence
(`DesiredState.fence_cleared` naming the same time).

Both stamps use the monotonic clock, which keeps running while the node is frozen (a
cgroup freeze, a VM paused by its hypervisor): after a thaw both are stale. Each updater
judges the watchdog *before* it records its success, so the first answer after a long
gap cannot avert the fence it is late for. A ticker judges it too, every heartbeat
interval, for when no updater returns at all (a write or a long-poll that hangs).

The fence is kept in a file of the agent's data directory, so a restarted agent still
refuses starts.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

STATE_FILE = "fence.json"


class Watchdog:
    """Decides when this node fences itself, does it through `destroy_all`, and remembers it.

    `destroy_all()` destroys every running domain of this node and returns the ids it
    destroyed (it raises if one could not be destroyed: the next judgement tries again).
    `clock` is monotonic seconds, `wall` the UTC time reported to the controller.
    """

    def __init__(self, fence_after_s: float, destroy_all: Callable[[], list[str]],
                 state_dir: Path | None = None, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        if not fence_after_s > 0:
            raise ValueError(f"fence_after_s must be positive, not {fence_after_s}")
        self.fence_after_s = fence_after_s
        self._destroy_all = destroy_all
        self._file = state_dir / STATE_FILE if state_dir is not None else None
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        now = clock()
        self._controller_ok = now  # the agent starting counts as contact with both
        self._storage_ok = now
        self.fenced_at: datetime | None = None
        self.reason: str | None = None
        self._stood_down = False  # the agent is stopping: its silence is its own doing
        self._load()

    # -- what updaters call -----------------------------------------------------------
    def controller_ok(self) -> None:
        """The controller answered: judge first, then record the answer."""
        self._judge_then(lambda now: setattr(self, "_controller_ok", now))

    def storage_ok(self) -> None:
        """A storage heartbeat was written: judge first, then record the write."""
        self._judge_then(lambda now: setattr(self, "_storage_ok", now))

    def blocklisted(self, detail: str) -> None:
        """The storage refused the heartbeat because this client is blocklisted: another
        node may run these VMs already, so fence at once."""
        self._fence(f"self-fenced: the storage refuses this node's heartbeat, its Ceph "
                    f"client is blocklisted ({detail})")

    def stand_down(self) -> None:
        """The agent is stopping: from now on silence is no reason to fence (its polls have
        ended, a heartbeat still in flight may land late); a blocklisted heartbeat still
        fences, and a fence already taken stays. A node left without an agent is the
        controller's to fence (through its BMC and the Ceph blocklist)."""
        with self._lock:
            self._stood_down = True

    def check(self) -> datetime | None:
        """Judge now (the ticker); when fenced, destroy any own domain still running.
        Returns when the node fenced itself, or None."""
        self._judge_then(lambda now: None)
        if self.fenced_at is not None:
            self._enforce()
        return self.fenced_at

    def start_refusal(self) -> str | None:
        """Why no VM may start on this node now, or None when they may."""
        fenced = self.fenced_at
        if fenced is None:
            return None
        return (f"node self-fenced at {fenced.isoformat()}: no VM starts here until the "
                "controller clears the fence")

    def clear(self, cleared: datetime | None) -> bool:
        """Lift the fence when the controller clears exactly this one (`cleared` is the
        `self_fenced_at` it saw); a later fence stays. Whether it was lifted."""
        with self._lock:
            if cleared is None or self.fenced_at is None or cleared != self.fenced_at:
                return False
            self.fenced_at, self.reason = None, None
            now = self._clock()
            self._controller_ok = self._storage_ok = now  # a fresh lease from here
            if self._file is not None:
                self._file.unlink(missing_ok=True)
        log.warning("the controller cleared this node's fence of %s: VMs may start again",
                    cleared.isoformat())
        return True

    def watch(self, stopping: threading.Event, every_s: float) -> None:
        """Judge every `every_s` seconds until `stopping` is set (run on its own thread)."""
        while not stopping.wait(every_s):
            try:
                self.check()
            except Exception:  # the ticker must outlive a failed destroy: it retries
                log.exception("fence watchdog: enforcing the fence failed; retrying")

    # -- inside -----------------------------------------------------------------------
    def _judge_then(self, record: Callable[[float], None]) -> None:
        with self._lock:
            now = self._clock()
            controller = now - self._controller_ok
            storage = now - self._storage_ok
            due = (self.fenced_at is None and not self._stood_down
                   and controller >= self.fence_after_s and storage >= self.fence_after_s)
            record(now)
        if due:
            self._fence(f"self-fenced: no controller for {controller:.0f} s and no storage "
                        f"heartbeat for {storage:.0f} s")

    def _fence(self, reason: str) -> None:
        """Refuse starts from now on, then destroy every own domain."""
        with self._lock:
            first = self.fenced_at is None
            if first:
                self.fenced_at, self.reason = self._wall(), reason
                self._save()
        if first:
            log.error("%s; destroying every VM of this node (disks kept) and refusing "
                      "starts until the controller clears the fence", reason)
        self._enforce()

    def _enforce(self) -> None:
        destroyed = self._destroy_all()
        if destroyed:
            log.error("fenced: destroyed %s", ", ".join(sorted(destroyed)))

    def _save(self) -> None:
        if self._file is None or self.fenced_at is None:
            return
        tmp = self._file.with_name(self._file.name + ".tmp")
        tmp.write_text(json.dumps({"fenced_at": self.fenced_at.isoformat(),
                                   "reason": self.reason}))
        os.replace(tmp, self._file)

    def _load(self) -> None:
        if self._file is None:
            return
        try:
            saved = json.loads(self._file.read_text())
            self.fenced_at = datetime.fromisoformat(saved["fenced_at"])
            self.reason = str(saved.get("reason") or "")
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as e:
            # fail closed: a fence file that cannot be read is a fence
            self.fenced_at, self.reason = self._wall(), f"fence file unreadable: {e}"
            log.error("the fence file %s cannot be read (%s): the node stays fenced",
                      self._file, e)
            return
        log.error("this node fenced itself at %s (%s): starts stay refused until the "
                  "controller clears it", self.fenced_at.isoformat(), self.reason)
