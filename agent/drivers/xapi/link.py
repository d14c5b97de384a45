"""A pool agent's ways into its pool: the event loop with its cache, and logged-in clients
for calls, all built from the settings the controller hands the agent.

The event loop holds a session of its own (its `event.from` blocks); calls are made by
one PoolClient per worker thread (XenAPI's ServerProxy is not thread-safe), made on
first use and logged out at `stop`. Every client is pinned to the enrolled members'
certificates and refuses a master of another pool.
"""

from __future__ import annotations

import threading

from agent.drivers.xapi.events import EventLoop, PoolCache
from agent.drivers.xapi.inventory import pool_info
from agent.drivers.xapi.pool import PoolClient
from agent.protocol import XapiPoolInfo, XapiSettings


class PoolLink:
    """Everything a pool agent talks to its pool with (see the module docstring)."""

    def __init__(self, settings: XapiSettings, label: str) -> None:
        self.settings, self.label = settings, label
        self.cache = PoolCache()
        self.loop = EventLoop(self.new_client(), self.cache)
        self._local = threading.local()
        self._clients: list[PoolClient] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<PoolLink {self.label}>"  # never the settings: they hold the password

    def new_client(self) -> PoolClient:
        """A client of its own (not logged in until its first call)."""
        s = self.settings
        return PoolClient(s.url, s.username, s.password, s.pins, label=self.label,
                          pool_uuid=s.pool_uuid)

    def client(self) -> PoolClient:
        """This thread's client for calls."""
        found: PoolClient | None = getattr(self._local, "client", None)
        if found is None:
            found = self._local.client = self.new_client()
            with self._lock:
                self._clients.append(found)
        return found

    def info(self) -> XapiPoolInfo:
        """The pool as the cache holds it now (no call made)."""
        return pool_info(self.cache, self.settings.pool_uuid, self.loop.client.address)

    def start(self) -> None:
        self.loop.start()

    def stop(self) -> None:
        """Stop the event loop and log every client out."""
        self.loop.stop()
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
