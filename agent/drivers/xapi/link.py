"""A pool agent's ways into its pool: the event loop with its cache, and logged-in clients
for calls, all built from the settings the controller hands the agent.

The event loop holds a session of its own (its `event.from` blocks); the drivers make
their calls through clients of their own (XenAPI's ServerProxy is not thread-safe, so
each is used under its owner's lock), all logged out at `stop`. Every client is pinned
to the enrolled members' certificates and refuses a master of another pool.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from agent.drivers.xapi.events import EventLoop, PoolCache
from agent.drivers.xapi.inventory import pool_info
from agent.drivers.xapi.pool import PoolClient
from agent.protocol import XapiPoolInfo, XapiSettings

log = logging.getLogger(__name__)


class PoolLink:
    """Everything a pool agent talks to its pool with (see the module docstring)."""

    def __init__(self, settings: XapiSettings, label: str,
                 refresh: Callable[[], XapiSettings] | None = None) -> None:
        self.settings, self.label = settings, label
        self._refresh = refresh  # the settings as the controller holds them now
        self._clients: list[PoolClient] = []
        self._lock = threading.Lock()
        self.cache = PoolCache()
        self.loop = EventLoop(self.new_client(), self.cache,
                              on_certificate_refused=self.refresh_pins)

    def __repr__(self) -> str:
        return f"<PoolLink {self.label}>"  # never the settings: they hold the password

    def new_client(self) -> PoolClient:
        """A client of the caller's own (not logged in until its first call; logged out
        at `stop`)."""
        s = self.settings
        client = PoolClient(s.url, s.username, s.password, s.pins, label=self.label,
                            pool_uuid=s.pool_uuid, certificates=s.certificates)
        client.on_certificate_refused = self.refresh_pins  # a member re-pinned meanwhile
        with self._lock:
            self._clients.append(client)
        return client

    def refresh_pins(self) -> bool:
        """Take the pins the controller holds now (an operator re-pinned after a planned
        certificate change); whether they changed. A controller away changes nothing."""
        if self._refresh is None:
            return False
        try:
            fresh = self._refresh()
        except Exception as e:  # noqa: BLE001 - the old pins stay; the next refusal asks again
            log.warning("pool %s: its pins could not be read again: %s", self.label, e)
            return False
        if (fresh.pins, fresh.certificates) == (self.settings.pins, self.settings.certificates):
            return False
        log.info("pool %s: certificates re-pinned by the region", self.label)
        with self._lock:
            self.settings = fresh
            for client in self._clients:
                client.take_pins(fresh.pins, fresh.certificates)
        return True

    def info(self) -> XapiPoolInfo:
        """The pool as the cache holds it now (no call made)."""
        return pool_info(self.cache, self.settings.pool_uuid, self.loop.client.address)

    def start(self) -> None:
        self.loop.start()

    def stop(self) -> None:
        """Stop the event loop and log every client out."""
        self.loop.stop()  # it closes its own client
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
