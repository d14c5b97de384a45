"""DHCP frames as the node's responder reads and answers them, and which ports it answers."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from agent.dhcp.leases import UNROUTED_SERVER_ID, leases_of
from agent.dhcp.packet import (
    BOOTP,
    ETH_HEADER,
    IP_HEADER,
    MAGIC_COOKIE,
    UDP_HEADER,
    BadPacket,
    Lease,
    MessageType,
    answer_kind,
    build_reply,
    parse,
)
from agent.protocol import (
    CloudInitSeed,
    DesiredNetwork,
    DesiredPort,
    DesiredState,
    DesiredVm,
    ImageRef,
    NetworkKind,
    PowerState,
)

MAC = "52:54:00:aa:bb:cc"
LEASE = Lease(mac=MAC, address=ipaddress.IPv4Interface("10.1.2.5/24"),
              server_id=ipaddress.IPv4Address("10.1.2.1"),
              router=ipaddress.IPv4Address("10.1.2.1"),
              dns=(ipaddress.IPv4Address("10.1.2.53"),), mtu=1450, hostname="web-1")


def _mac(text: str) -> bytes:
    return bytes(int(p, 16) for p in text.split(":"))


def request(kind: int, *, options: bytes = b"", mac: str = MAC, ciaddr: str = "0.0.0.0",
            flags: int = 0, frag: int = 0, dport: int = 67) -> bytes:
    """A client's frame as it leaves its NIC."""
    bootp = BOOTP.pack(1, 1, 6, 0, 0x1234ABCD, 0, flags, ipaddress.IPv4Address(ciaddr).packed,
                       b"\0" * 4, b"\0" * 4, b"\0" * 4, _mac(mac) + b"\0" * 10,
                       b"\0" * 64, b"\0" * 128)
    payload = bootp + MAGIC_COOKIE + bytes((53, 1, kind)) + options + b"\xff"
    udp = UDP_HEADER.pack(68, dport, UDP_HEADER.size + len(payload), 0) + payload
    ip = IP_HEADER.pack(0x45, 0, IP_HEADER.size + len(udp), 0, frag, 64, 17, 0,
                        b"\0" * 4, b"\xff" * 4)
    return ETH_HEADER.pack(b"\xff" * 6, _mac(mac), 0x0800) + ip + udp


def reply_options(frame: bytes) -> dict[int, bytes]:
    at = ETH_HEADER.size + IP_HEADER.size + UDP_HEADER.size + BOOTP.size + 4
    found, i = {}, at
    while frame[i] != 255:
        found[frame[i]] = frame[i + 2:i + 2 + frame[i + 1]]
        i += 2 + frame[i + 1]
    return found


def checksum_ok(data: bytes) -> bool:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def test_a_discover_is_offered_the_ports_address_with_everything_it_needs() -> None:
    req = parse(request(1))
    assert (req.kind, req.client_mac, req.source_mac, req.xid) == \
        (MessageType.DISCOVER, MAC, MAC, 0x1234ABCD)
    kind = answer_kind(req, LEASE)
    assert kind == MessageType.OFFER
    frame = build_reply(kind, req, LEASE, "fe:54:00:aa:bb:cc")
    dst, src, _ = ETH_HEADER.unpack_from(frame)
    assert (dst, src) == (_mac(MAC), _mac("fe:54:00:aa:bb:cc"))
    ip = frame[ETH_HEADER.size:ETH_HEADER.size + IP_HEADER.size]
    assert checksum_ok(ip)
    assert ip[12:16] == ipaddress.IPv4Address("10.1.2.1").packed
    assert ip[16:20] == ipaddress.IPv4Address("10.1.2.5").packed  # unicast: no broadcast flag
    udp = frame[ETH_HEADER.size + IP_HEADER.size:]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    assert checksum_ok(pseudo + udp)
    bootp = BOOTP.unpack_from(udp, UDP_HEADER.size)
    assert (bootp[0], bootp[4], ipaddress.IPv4Address(bootp[8])) == \
        (2, 0x1234ABCD, ipaddress.IPv4Address("10.1.2.5"))
    options = reply_options(frame)
    assert options[53] == bytes((2,)) and options[54] == LEASE.server_id.packed
    assert options[51] == b"\xff\xff\xff\xff"  # for ever: the address is the port's
    assert options[1] == ipaddress.IPv4Address("255.255.255.0").packed
    assert options[3] == LEASE.router.packed if LEASE.router else False
    assert options[6] == LEASE.dns[0].packed
    assert options[26] == struct.pack("!H", 1450) and options[12] == b"web-1"


def test_the_broadcast_flag_gets_a_broadcast_answer() -> None:
    req = parse(request(1, flags=0x8000))
    frame = build_reply(MessageType.OFFER, req, LEASE, "fe:54:00:aa:bb:cc")
    assert frame[ETH_HEADER.size + 16:ETH_HEADER.size + 20] == b"\xff" * 4


@pytest.mark.parametrize("options,ciaddr,expected", [
    (bytes((50, 4, 10, 1, 2, 5)), "0.0.0.0", MessageType.ACK),          # selecting / init-reboot
    (bytes((50, 4, 10, 1, 2, 6)), "0.0.0.0", MessageType.NAK),          # another address
    (b"", "10.1.2.5", MessageType.ACK),                                 # renewing
    (b"", "10.9.9.9", MessageType.NAK),                                 # an old address
    (bytes((50, 4, 10, 1, 2, 5, 54, 4, 10, 1, 2, 1)), "0.0.0.0", MessageType.ACK),
    (bytes((50, 4, 10, 1, 2, 5, 54, 4, 192, 0, 2, 1)), "0.0.0.0", None),  # chose another server
])
def test_a_request_is_acked_only_for_the_ports_own_address(
        options: bytes, ciaddr: str, expected: MessageType | None) -> None:
    assert answer_kind(parse(request(3, options=options, ciaddr=ciaddr)), LEASE) == expected


def test_release_and_decline_are_not_answered_and_inform_gets_settings_only() -> None:
    assert answer_kind(parse(request(7)), LEASE) is None
    assert answer_kind(parse(request(4)), LEASE) is None
    inform = parse(request(8, ciaddr="10.1.2.5"))
    frame = build_reply(MessageType.ACK, inform, LEASE, "fe:54:00:aa:bb:cc")
    bootp = BOOTP.unpack_from(frame, ETH_HEADER.size + IP_HEADER.size + UDP_HEADER.size)
    assert bootp[8] == b"\0" * 4 and 51 not in reply_options(frame)


def test_a_nak_says_why_and_carries_no_settings() -> None:
    req = parse(request(3, options=bytes((50, 4, 10, 1, 2, 6))))
    options = reply_options(build_reply(MessageType.NAK, req, LEASE, "fe:54:00:aa:bb:cc"))
    assert options[53] == bytes((6,)) and b"not this port" in options[56]
    assert not {1, 3, 6, 51} & options.keys()


@pytest.mark.parametrize("frame,why", [
    (request(1)[:40], "too short"),
    (request(1, frag=0x2000), "unfragmented"),
    (request(1, dport=68), "server port"),
    (request(1)[:-1], "do not end"),
    (request(1).replace(MAGIC_COOKIE, b"\0\0\0\0"), "magic cookie"),
    (request(1, options=bytes((50, 9, 1))), "runs past"),
    (request(1, options=bytes((50, 2, 1, 2))), "not an IPv4 address"),
    (request(1)[:-4] + b"\xff", "message type"),
])
def test_malformed_requests_are_refused_with_a_reason(frame: bytes, why: str) -> None:
    with pytest.raises(BadPacket, match=why):
        parse(frame)


def _vm(vm_id: str, ports: list[DesiredPort]) -> DesiredVm:
    return DesiredVm(id=vm_id, name=vm_id, vcpus=1, memory_mib=128,
                     image=ImageRef(id="i", name="i", disk_format="raw", size_bytes=1,
                                    sha256="0" * 64),
                     power=PowerState.RUNNING, power_seq=0, ports=ports,
                     seed=CloudInitSeed(instance_id=vm_id, hostname=f"{vm_id}-host"))


def test_only_ports_of_tenant_networks_with_ipv4_get_leases() -> None:
    tenant = DesiredNetwork(id="t", name="lan", kind=NetworkKind.TENANT, mtu=1450, vni=1001)
    provider = DesiredNetwork(id="p", name="dc", kind=NetworkKind.PROVIDER, mtu=1500,
                              vlan=10, physical="eth1")
    routed = DesiredPort(id="p1", network_id="t", mac="52:54:00:00:00:01",
                         addresses=["fd00::5/64", "10.0.0.5/24"],
                         gateways=["fd00::1", "10.0.0.1"], dns=["fd00::53", "10.0.0.53"],
                         mtu=1450)
    unrouted = DesiredPort(id="p2", network_id="t", mac="52:54:00:00:00:02",
                           addresses=["10.0.1.7/24"], gateways=["10.0.0.1"], mtu=1450)
    v6_only = DesiredPort(id="p3", network_id="t", mac="52:54:00:00:00:03",
                          addresses=["fd00::7/64"], mtu=1450)
    on_provider = DesiredPort(id="p4", network_id="p", mac="52:54:00:00:00:04",
                              addresses=["192.0.2.9/24"], mtu=1500)
    desired = DesiredState(node_id="n", generation=1, networks=[tenant, provider],
                           vms=[_vm("a", [routed, unrouted]), _vm("b", [v6_only, on_provider])])
    leases = leases_of(desired)
    assert set(leases) == {"p1", "p2"}
    first = leases["p1"]
    assert (str(first.address), str(first.router), [str(d) for d in first.dns],
            first.mtu, first.hostname) == ("10.0.0.5/24", "10.0.0.1", ["10.0.0.53"], 1450,
                                           "a-host")
    second = leases["p2"]  # its subnet has no gateway: 10.0.0.1 is not in it
    assert second.router is None and second.server_id == UNROUTED_SERVER_ID
