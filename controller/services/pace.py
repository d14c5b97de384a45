"""The pace of agents: how often they report and how long a long-poll waits, by region size.

Liveness does not need the status report: every long-poll an agent opens proves it alive,
and the controller names the wait (`poll_wait_s`) so that it opens one well within the
down delay. The long-polls' renewals are then a region's steady load (nodes / wait a
second); a large region trades a longer down delay for fewer of them.

The report carries what the node observes, is sent at once on every change, and beyond
that only refreshes measurements (free space, pool usage, telemetry). So its interval may
grow with the region, as
Nomad's heartbeat TTL does: the controller keeps the reports of the whole region under
`max_reports_per_s` and tells every agent the interval on every answer. A region of
250 nodes at the default rate reports every 5 s; one of 10,000 every 200 s.
"""

from __future__ import annotations

import threading

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from agent.protocol import PACE_RANGE
from controller.db.models import Node

REPORT_FLOOR_S = 5.0  # the agent's own default; small regions report this often
# a long-poll ends this long before its node would be counted down: time for the answer,
# the next poll, and the batched write of when the node was heard
POLL_MARGIN_S = 5.0


class RegionPace:
    """The node count (refreshed by the controller's upkeep) and the pace derived from it."""

    def __init__(self, max_reports_per_s: float, node_down_after_s: float) -> None:
        if not max_reports_per_s > 0 or not node_down_after_s > 0:
            raise ValueError("the report rate and the down delay must be positive")
        self.max_reports_per_s = max_reports_per_s
        self.node_down_after_s = node_down_after_s
        self._lock = threading.Lock()
        self._nodes = 0

    def refresh(self, sessions: sessionmaker[Session]) -> int:
        """Count the region's nodes again; returns the count. On failure the last count stays."""
        with sessions() as db:
            nodes = db.scalar(select(func.count(Node.id))) or 0
        with self._lock:
            self._nodes = nodes
        return nodes

    @property
    def report_interval_s(self) -> float:
        """Seconds between two status reports of an agent that has nothing new to say."""
        with self._lock:
            nodes = self._nodes
        return max(REPORT_FLOOR_S, nodes / self.max_reports_per_s)

    @property
    def poll_wait_s(self) -> float:
        """How long a long-poll waits: as long as it can without a live agent being counted
        down between two of its polls."""
        down = self.node_down_after_s
        return min(max(down - POLL_MARGIN_S, down / 2), PACE_RANGE[1])

    def capped_wait(self, asked: float) -> float:
        """What an agent asked, never longer than `poll_wait_s`."""
        return min(asked, self.poll_wait_s)
