"""The node's DHCP responder: one thread and one packet socket for all its VM ports.

It reads only what a kernel filter lets through (unfragmented IPv4 UDP to port 67, on
any interface), answers a frame only when it came in on the tap of a port it holds a
lease for and from that port's own MAC (so a guest cannot ask for another port's
address), and writes the answer straight back out of that tap: it never crosses the
bridge, so no other port nor node sees it.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import socket
import struct
import threading

from agent.dhcp.packet import BadPacket, Lease, answer_kind, build_reply, mac_text, parse
from agent.drivers.network.netns import in_netns

log = logging.getLogger(__name__)

# every protocol: a frame is then seen on the tap it came in on, before its bridge takes
# it (a packet socket of one protocol sees it only once the bridge has, as the bridge's)
ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
SIOCGIFHWADDR = 0x8927
PACKET_OUTGOING = 4
FRAME_MAX = 4096
POLL_S = 1.0  # how soon a stop is noticed
# Classic BPF over the Ethernet frame: accept unfragmented IPv4 UDP to port 67, else drop
_FILTER = (
    (0x28, 0, 0, 12),        # ldh [12]            ethertype
    (0x15, 0, 8, 0x0800),    # jeq #0x800 (IPv4)   else drop
    (0x30, 0, 0, 23),        # ldb [23]            IP protocol
    (0x15, 0, 6, 17),        # jeq #17 (UDP)       else drop
    (0x28, 0, 0, 20),        # ldh [20]            flags + fragment offset
    (0x45, 4, 0, 0x1FFF),    # jset #0x1fff        a fragment: drop
    (0xB1, 0, 0, 14),        # ldxb 4*([14]&0xf)   IP header length
    (0x48, 0, 0, 16),        # ldh [x+16]          UDP destination port
    (0x15, 0, 1, 67),        # jeq #67             else drop
    (0x06, 0, 0, 0x40000),   # ret: accept
    (0x06, 0, 0, 0),         # ret: drop
)


class DhcpUnavailable(Exception):
    """The responder could not open its socket (no CAP_NET_RAW, no such namespace...)."""


def _attach_filter(sock: socket.socket) -> None:
    program = b"".join(struct.pack("HBBI", *insn) for insn in _FILTER)
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HL", len(_FILTER), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class DhcpResponder:
    """Answers the DHCP of the ports in `set_leases` (tap name -> lease), in the node's
    network namespace (or `netns`, for tests), from `start()` until `stop()`."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._leases: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.answered = 0  # answers sent since start, for metrics and tests

    def set_leases(self, leases: dict[str, Lease]) -> None:
        """From now on answer exactly these ports (replacing the previous set)."""
        with self._lock:
            self._leases = dict(leases)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Open the socket and serve in a thread; DhcpUnavailable when it cannot be opened.
        Starting a running responder does nothing."""
        if self.running:
            return
        try:
            with in_netns(self.netns):  # a packet socket sees the namespace it opens in
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except OSError as e:
            raise DhcpUnavailable(f"cannot open a packet socket: {e.strerror or e}") from e
        try:
            _attach_filter(sock)
            sock.settimeout(POLL_S)
        except OSError as e:
            sock.close()
            raise DhcpUnavailable(f"cannot filter the packet socket: {e.strerror or e}") from e
        self._sock = sock
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, name="dhcp", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket; returns once the thread has ended."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _serve(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._stopping.is_set():
            try:
                frame, address = sock.recvfrom(FRAME_MAX)
            except TimeoutError:
                continue
            except OSError as e:
                if not self._stopping.is_set():
                    log.warning("DHCP responder: receive failed: %s", e)
                continue
            ifname, pkttype = address[0], address[2]
            if pkttype == PACKET_OUTGOING:
                continue
            with self._lock:
                lease = self._leases.get(ifname)
            if lease is not None:
                self._answer(sock, ifname, frame, lease)

    def _answer(self, sock: socket.socket, tap: str, frame: bytes, lease: Lease) -> None:
        try:
            request = parse(frame)
        except BadPacket as e:
            log.debug("DHCP responder: %s: ignored: %s", tap, e)
            return
        if request.client_mac != lease.mac or request.source_mac != lease.mac:
            log.info("DHCP responder: %s: a request for %s from %s is not its port's (%s)",
                     tap, request.client_mac, request.source_mac, lease.mac)
            return
        kind = answer_kind(request, lease)
        if kind is None:
            return
        try:
            server_mac = self._mac_of(sock, tap)
            sock.sendto(build_reply(kind, request, lease, server_mac), (tap, 0))
        except OSError as e:
            log.warning("DHCP responder: %s: answer not sent: %s", tap, e)
            return
        self.answered += 1
        log.info("DHCP responder: %s: %s %s to %s", tap, kind.name, lease.address.ip, lease.mac)

    @staticmethod
    def _mac_of(sock: socket.socket, ifname: str) -> str:
        """The tap's own MAC: a frame the guest sends to it stays on this host."""
        raw = fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR,
                          struct.pack("256s", ifname.encode()[:15]))
        return mac_text(raw[18:24])
