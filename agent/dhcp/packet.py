"""DHCPv4 (RFC 2131/2132) frames as the node's responder reads and writes them: pure
parsing and building, no sockets.

Only what a responder for fixed bindings needs: a client's DISCOVER, REQUEST, INFORM
(RELEASE and DECLINE are read and need no answer), and the OFFER, ACK or NAK it gets
back as a whole Ethernet frame. Anything malformed is refused with `BadPacket`.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum

ETH_HEADER = struct.Struct("!6s6sH")
IP_HEADER = struct.Struct("!BBHHHBBH4s4s")
UDP_HEADER = struct.Struct("!HHHH")
# op htype hlen hops xid secs flags ciaddr yiaddr siaddr giaddr chaddr(16) sname(64) file(128)
BOOTP = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
MAGIC_COOKIE = b"\x63\x82\x53\x63"
ETH_P_IP = 0x0800
SERVER_PORT, CLIENT_PORT = 67, 68
BOOTREQUEST, BOOTREPLY = 1, 2
BROADCAST_FLAG = 0x8000
INFINITE_LEASE = 0xFFFFFFFF
MAX_HOSTNAME = 63

# option codes (RFC 2132)
OPT_PAD, OPT_END = 0, 255
OPT_SUBNET_MASK, OPT_ROUTER, OPT_DNS, OPT_HOSTNAME, OPT_MTU = 1, 3, 6, 12, 26
OPT_REQUESTED_IP, OPT_LEASE_TIME, OPT_MESSAGE_TYPE, OPT_SERVER_ID = 50, 51, 53, 54
OPT_MESSAGE = 56


class MessageType(IntEnum):
    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


class BadPacket(ValueError):
    """Not a DHCP request this responder can read."""


@dataclass(frozen=True)
class Request:
    """A client's DHCP message, as far as the answer depends on it."""

    kind: MessageType
    xid: int
    flags: int
    client_mac: str  # chaddr, lower-case colon form
    source_mac: str  # the Ethernet frame's source
    ciaddr: ipaddress.IPv4Address
    requested_ip: ipaddress.IPv4Address | None
    server_id: ipaddress.IPv4Address | None


@dataclass(frozen=True)
class Lease:
    """What one port is told: its own address for ever, and how to reach the rest."""

    mac: str
    address: ipaddress.IPv4Interface
    server_id: ipaddress.IPv4Address
    router: ipaddress.IPv4Address | None = None
    dns: tuple[ipaddress.IPv4Address, ...] = ()
    mtu: int | None = None
    hostname: str | None = None


def mac_text(raw: bytes) -> str:
    """A hardware address as text: six lower-case hex bytes joined by colons."""
    return ":".join(f"{b:02x}" for b in raw[:6])


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def _options(data: bytes) -> dict[int, bytes]:
    """The options after the magic cookie; the first of a repeated code wins."""
    found: dict[int, bytes] = {}
    i = 0
    while i < len(data):
        code = data[i]
        if code == OPT_END:
            return found
        if code == OPT_PAD:
            i += 1
            continue
        if i + 1 >= len(data) or i + 2 + data[i + 1] > len(data):
            raise BadPacket(f"option {code} runs past the packet")
        found.setdefault(code, data[i + 2:i + 2 + data[i + 1]])
        i += 2 + data[i + 1]
    raise BadPacket("options do not end")


def _ipv4(value: bytes | None, what: str) -> ipaddress.IPv4Address | None:
    if value is None:
        return None
    if len(value) != 4:
        raise BadPacket(f"{what} is not an IPv4 address")
    return ipaddress.IPv4Address(value)


def parse(frame: bytes) -> Request:
    """The DHCP request carried by an Ethernet frame (IPv4, UDP to port 67)."""
    if len(frame) < ETH_HEADER.size + IP_HEADER.size:
        raise BadPacket("frame too short")
    _dst, src, ethertype = ETH_HEADER.unpack_from(frame)
    if ethertype != ETH_P_IP:
        raise BadPacket("not IPv4")
    ip_at = ETH_HEADER.size
    version_ihl, _tos, total, _ident, frag, _ttl, proto, _sum, _s, _d = \
        IP_HEADER.unpack_from(frame, ip_at)
    ihl = (version_ihl & 0x0F) * 4
    if version_ihl >> 4 != 4 or ihl < IP_HEADER.size or proto != 17 or frag & 0x3FFF:
        raise BadPacket("not an unfragmented IPv4 UDP packet")
    udp_at = ip_at + ihl
    end = min(len(frame), ip_at + total)
    if end < udp_at + UDP_HEADER.size + BOOTP.size + len(MAGIC_COOKIE):
        raise BadPacket("too short for DHCP")
    _sport, dport, _length, _csum = UDP_HEADER.unpack_from(frame, udp_at)
    if dport != SERVER_PORT:
        raise BadPacket("not to the DHCP server port")
    bootp_at = udp_at + UDP_HEADER.size
    (op, htype, hlen, _hops, xid, _secs, flags, ciaddr, _yi, _si, _gi, chaddr, _sname,
     _file) = BOOTP.unpack_from(frame, bootp_at)
    if op != BOOTREQUEST or htype != 1 or hlen != 6:
        raise BadPacket("not an Ethernet BOOTREQUEST")
    cookie_at = bootp_at + BOOTP.size
    if frame[cookie_at:cookie_at + 4] != MAGIC_COOKIE:
        raise BadPacket("no DHCP magic cookie")
    options = _options(frame[cookie_at + 4:end])
    kind = options.get(OPT_MESSAGE_TYPE)
    if kind is None or len(kind) != 1 or kind[0] not in MessageType._value2member_map_:
        raise BadPacket("no DHCP message type")
    return Request(kind=MessageType(kind[0]), xid=xid, flags=flags, client_mac=mac_text(chaddr),
                   source_mac=mac_text(src), ciaddr=ipaddress.IPv4Address(ciaddr),
                   requested_ip=_ipv4(options.get(OPT_REQUESTED_IP), "requested address"),
                   server_id=_ipv4(options.get(OPT_SERVER_ID), "server identifier"))


def answer_kind(request: Request, lease: Lease) -> MessageType | None:
    """What the responder answers `request` with, for the port whose lease it is
    (None: no answer). A REQUEST for another address, or another server's, is refused
    with NAK only when it is meant for this server or asks an address outright."""
    if request.kind == MessageType.DISCOVER:
        return MessageType.OFFER
    if request.kind == MessageType.INFORM:
        return MessageType.ACK
    if request.kind != MessageType.REQUEST:
        return None  # RELEASE, DECLINE: the binding is fixed, nothing to undo
    if request.server_id is not None and request.server_id != lease.server_id:
        return None  # the client chose another server's offer
    asked = request.requested_ip or request.ciaddr
    return MessageType.ACK if asked == lease.address.ip else MessageType.NAK


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _option(code: int, value: bytes) -> bytes:
    return bytes((code, len(value))) + value


def _reply_options(kind: MessageType, lease: Lease, inform: bool) -> bytes:
    out = _option(OPT_MESSAGE_TYPE, bytes((kind,))) + _option(OPT_SERVER_ID,
                                                              lease.server_id.packed)
    if kind == MessageType.NAK:
        return out + _option(OPT_MESSAGE, b"that address is not this port's") + bytes((OPT_END,))
    if not inform:  # an INFORM's ACK carries no lease (RFC 2131 table 3)
        out += _option(OPT_LEASE_TIME, struct.pack("!I", INFINITE_LEASE))
    out += _option(OPT_SUBNET_MASK, lease.address.network.netmask.packed)
    if lease.router is not None:
        out += _option(OPT_ROUTER, lease.router.packed)
    if lease.dns:
        out += _option(OPT_DNS, b"".join(d.packed for d in lease.dns[:8]))
    if lease.mtu is not None:
        out += _option(OPT_MTU, struct.pack("!H", lease.mtu))
    if lease.hostname:
        out += _option(OPT_HOSTNAME, lease.hostname.encode("ascii")[:MAX_HOSTNAME])
    return out + bytes((OPT_END,))


def build_reply(kind: MessageType, request: Request, lease: Lease, server_mac: str) -> bytes:
    """The whole Ethernet frame answering `request`, sent straight to the client's MAC.

    The IP destination is the broadcast address when the client asked for it (or is
    refused), else the address it is given (RFC 2131 4.1)."""
    inform = request.kind == MessageType.INFORM
    yiaddr = ipaddress.IPv4Address(0) if inform or kind == MessageType.NAK else lease.address.ip
    bootp = BOOTP.pack(BOOTREPLY, 1, 6, 0, request.xid, 0, request.flags,
                       request.ciaddr.packed if inform else b"\0" * 4, yiaddr.packed,
                       b"\0" * 4, b"\0" * 4, _mac_bytes(request.client_mac) + b"\0" * 10,
                       b"\0" * 64, b"\0" * 128)
    payload = bootp + MAGIC_COOKIE + _reply_options(kind, lease, inform)
    if inform and int(request.ciaddr):
        dst_ip = request.ciaddr
    elif request.flags & BROADCAST_FLAG or kind == MessageType.NAK:
        dst_ip = ipaddress.IPv4Address("255.255.255.255")
    else:
        dst_ip = lease.address.ip
    src_ip = lease.server_id
    udp_length = UDP_HEADER.size + len(payload)
    pseudo = src_ip.packed + dst_ip.packed + struct.pack("!BBH", 0, 17, udp_length)
    udp = UDP_HEADER.pack(SERVER_PORT, CLIENT_PORT, udp_length, 0) + payload
    udp_sum = _checksum(pseudo + udp) or 0xFFFF
    udp = UDP_HEADER.pack(SERVER_PORT, CLIENT_PORT, udp_length, udp_sum) + payload
    header = IP_HEADER.pack(0x45, 0x10, IP_HEADER.size + len(udp), 0, 0, 64, 17, 0,
                            src_ip.packed, dst_ip.packed)
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    eth = ETH_HEADER.pack(_mac_bytes(request.client_mac), _mac_bytes(server_mac), ETH_P_IP)
    return eth + header + udp
