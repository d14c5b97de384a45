"""The agent's side of VM consoles: hear the requests, open the VM's console, dial back.

A thread long-polls the controller for consoles users wait for on this node's VMs; for each
it opens the console through the hypervisor driver and dials the controller back with the
node's certificate (the node opens no listener), then relays bytes both ways until either
side ends. When the node's side cannot be opened, the agent still dials back and closes the
websocket with CONSOLE_FAILED and the reason in words, which the user is shown.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from simple_websocket import ConnectionClosed
from simple_websocket.ws import Base

from agent.client import ControllerClient, ControllerUnavailable, Refused, keep_asking
from agent.drivers.hypervisor.base import ConsoleStream, HypervisorDriver, HypervisorError
from agent.protocol import CONSOLE_FAILED, ConsoleRequest

log = logging.getLogger(__name__)

CHUNK = 64 * 1024  # at most this much in flight per direction: a slow side slows the other
MAX_OPEN = 32  # consoles open at once on this node; more are refused, saying so
STOP_CHECK_S = 5.0  # how often a blocked receive looks whether the other direction ended
CLOSE_WAIT_S = 5.0  # for the controller to answer our close frame
POLL_WAIT_S = 25.0


class ConsoleDialer:
    """Serves the console requests of this node until `stopping` is set.

    `on_refused` is told when the controller refuses the agent for good (the agent stops);
    `retry_delay(failures)` says how long to wait after failures in a row.
    """

    def __init__(self, client: ControllerClient, hypervisor: HypervisorDriver,
                 stopping: threading.Event, on_refused: Callable[[Refused], None],
                 retry_delay: Callable[[int], float]) -> None:
        self.client, self.hypervisor, self.stopping = client, hypervisor, stopping
        self.on_refused, self.retry_delay = on_refused, retry_delay
        self._open = threading.BoundedSemaphore(MAX_OPEN)

    def run(self) -> None:
        keep_asking("console requests", self.stopping, self._ask, self._serve_all,
                    self.on_refused, self.retry_delay)

    def _ask(self) -> list[ConsoleRequest]:
        return self.client.console_requests(self.client.poll_wait_s or POLL_WAIT_S).requests

    def _serve_all(self, asked: list[ConsoleRequest]) -> None:
        for request in asked:
            threading.Thread(target=self.serve, args=(request,), daemon=True,
                             name=f"console-{request.id[:8]}").start()

    def serve(self, request: ConsoleRequest) -> None:
        """Open the VM's console and relay it to the controller; every failure is said to
        the controller (close reason) when it can be reached, and logged."""
        if not self._open.acquire(blocking=False):
            self._refuse(request, f"this node has {MAX_OPEN} consoles open already, the most "
                         "it serves at once; close one")
            return
        try:
            try:
                local = self.hypervisor.open_console(request.vm_id, request.kind)
            except HypervisorError as e:
                log.warning("console %s of VM %s: %s", request.id, request.vm_id, e)
                self._refuse(request, str(e))
                return
            try:
                ws = self.client.dial_console(request.id)
            except ControllerUnavailable as e:
                local.close()
                log.warning("console %s: cannot dial back: %s", request.id, e)
                return
            log.info("console %s (%s) of VM %s opened", request.id, request.kind,
                     request.vm_id)
            relay(ws, local)
            log.info("console %s of VM %s ended", request.id, request.vm_id)
        finally:
            self._open.release()

    def _refuse(self, request: ConsoleRequest, reason: str) -> None:
        try:
            ws = self.client.dial_console(request.id)
        except ControllerUnavailable as e:
            log.warning("console %s: cannot tell the controller it failed (%s): %s",
                        request.id, reason, e)
            return
        close(ws, CONSOLE_FAILED, reason)


def relay(ws: Any, local: ConsoleStream) -> None:
    """Bytes both ways between the controller's websocket and the VM's console until
    either ends; the websocket is then closed (1000 when the VM's side ended normally,
    CONSOLE_FAILED with the error when it broke) and the console closed."""
    done = threading.Event()

    def to_guest() -> None:
        try:
            while not done.is_set():
                data = ws.receive(timeout=STOP_CHECK_S)
                if data is None:
                    continue
                local.sendall(data.encode() if isinstance(data, str) else bytes(data))
        except (ConnectionClosed, OSError):
            pass
        finally:
            done.set()
            local.close()  # a recv waiting for the guest returns

    pump = threading.Thread(target=to_guest, name="console-to-guest", daemon=True)
    pump.start()
    failure: str | None = None
    try:
        while not done.is_set():
            data = local.recv(CHUNK)
            if not data:
                break
            ws.send(data)
    except ConnectionClosed:
        pass
    except OSError as e:
        if not done.is_set():
            failure = f"the VM's console broke: {e}"
    done.set()
    if failure is not None:
        close(ws, CONSOLE_FAILED, failure)
    else:
        close(ws, 1000, "the VM's console ended")
    pump.join()
    local.close()


def close(ws: Any, code: int, message: str) -> None:
    """Close the client websocket `ws` with `code` and `message` (cut to what a close frame
    holds) and wait for its reading thread to end.

    Not simple_websocket's Client.close: it closes the socket while the reading thread may
    still be in a read on it, and the descriptor's number, reused by this process's next
    connection (a report, a long-poll), would be read from by the old thread. Here the
    socket is only shut down, and the reading thread closes it once it has stopped."""
    try:
        Base.close(ws, code, message.encode()[:123].decode(errors="ignore"))
    except (ConnectionClosed, OSError):
        pass
    end_reader(ws)


def end_reader(ws: Any) -> None:
    """Wait for the websocket's reading thread to end: the peer answers the close frame,
    or after CLOSE_WAIT_S its connection is shut down. Nothing may use the connection
    afterwards: its descriptor number goes to the process's next connection, and a reader
    left behind would read from it (both the agent and the controller end theirs so)."""
    reader = getattr(ws, "thread", None)
    if reader is None:
        return
    reader.join(CLOSE_WAIT_S)
    if reader.is_alive():
        try:
            ws.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        reader.join()
