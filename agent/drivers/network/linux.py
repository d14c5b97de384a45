"""Networks as Linux bridges with VLAN or unicast-VXLAN uplinks, over rtnetlink (pyroute2)."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeGuard

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.drivers.network.base import (
    ALIAS_PREFIX,
    BRIDGE_PREFIX,
    VXLAN_OVERHEAD,
    VXLAN_PORT,
    NetworkDriver,
    NetworkError,
    NetworkInfo,
    alias_of,
    bridge_name,
    check_desired,
    vlan_name,
    vxlan_name,
)
from agent.protocol import DesiredNetwork, NetworkKind
from agent.revert import Reverter

log = logging.getLogger(__name__)

ZERO_MAC = "00:00:00:00:00:00"
Link = Any  # a pyroute2 ifinfmsg


def _kind(link: Link) -> str | None:
    info = link.get("IFLA_LINKINFO")
    return info.get("IFLA_INFO_KIND") if info is not None else None


def _info_data(link: Link) -> Any:
    info = link.get("IFLA_LINKINFO")
    return info.get("IFLA_INFO_DATA") if info is not None else None


class LinuxNetworkDriver(NetworkDriver):
    """Builds networks in the node's network namespace (or in `netns`, for tests)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def info(self) -> NetworkInfo:
        return NetworkInfo(name="linux",
                           kinds=frozenset({NetworkKind.PROVIDER, NetworkKind.TENANT}))

    @contextmanager
    def _ipr(self) -> Iterator[Any]:
        try:
            ipr = IPRoute(netns=self.netns) if self.netns else IPRoute()
        except (OSError, NetlinkError) as exc:
            raise NetworkError(f"cannot open rtnetlink (netns {self.netns}): {exc}",
                               retryable=True) from exc
        try:
            yield ipr
        except NetlinkError as exc:
            raise NetworkError(f"netlink: {exc}") from exc
        finally:
            ipr.close()

    # --- observed state ---------------------------------------------------------------

    @staticmethod
    def _link(ipr: Any, ifname: str) -> Link | None:
        try:
            return ipr.link("get", ifname=ifname)[0]
        except NetlinkError as exc:
            if exc.code == 19:  # ENODEV
                return None
            raise

    @staticmethod
    def _ours(link: Link | None, network_id: str) -> TypeGuard[Link]:
        return link is not None and link.get("IFLA_IFALIAS") == alias_of(network_id)

    def list_networks(self) -> list[str]:
        ids = []
        with self._ipr() as ipr:
            for link in ipr.get_links():
                alias = link.get("IFLA_IFALIAS") or ""
                name = link.get("IFLA_IFNAME") or ""
                if (_kind(link) == "bridge" and name.startswith(BRIDGE_PREFIX)
                        and alias.startswith(ALIAS_PREFIX)):
                    network_id = alias[len(ALIAS_PREFIX):]
                    if bridge_name(network_id) == name:
                        ids.append(network_id)
        return sorted(ids)

    # --- removal ----------------------------------------------------------------------

    def remove_network(self, network_id: str) -> None:
        with self._ipr() as ipr:
            for name in (vxlan_name(network_id), vlan_name(network_id),
                         bridge_name(network_id)):
                link = self._link(ipr, name)
                if self._ours(link, network_id):
                    self._delete(ipr, link["index"])

    @staticmethod
    def _delete(ipr: Any, index: int) -> None:
        try:
            ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code != 19:  # already gone is what we wanted
                raise

    # --- creation ---------------------------------------------------------------------

    def ensure_network(self, net: DesiredNetwork, underlay_ip: str | None) -> None:
        check_desired(net, underlay_ip)
        with self._ipr() as ipr, Reverter() as revert:
            if net.kind == NetworkKind.TENANT:
                assert underlay_ip is not None  # check_desired
                self._check_underlay_mtu(ipr, net, underlay_ip)
                wrong_uplink = vlan_name(net.id)
            else:
                self._check_physical(ipr, net)
                wrong_uplink = vxlan_name(net.id)
            stale = self._link(ipr, wrong_uplink)  # the network changed kind
            if self._ours(stale, net.id):
                self._delete(ipr, stale["index"])
            bridge = self._ensure_bridge(ipr, net, revert)
            if net.kind == NetworkKind.TENANT:
                assert underlay_ip is not None
                uplink = self._ensure_vxlan(ipr, net, underlay_ip, bridge, revert)
                self._sync_peers(ipr, net, uplink)
            else:
                self._ensure_vlan(ipr, net, bridge, revert)
            # A bridge takes the smallest MTU of its ports: set its own after theirs.
            ipr.link("set", index=bridge, mtu=net.mtu, state="up")
            revert.success()

    def _underlay_link(self, ipr: Any, underlay_ip: str) -> Link:
        wanted = ipaddress.ip_address(underlay_ip)
        for addr in ipr.get_addr():
            local = addr.get("IFA_LOCAL") or addr.get("IFA_ADDRESS")
            if local and ipaddress.ip_address(local) == wanted:
                return ipr.link("get", index=addr["index"])[0]
        raise NetworkError(f"underlay address {underlay_ip} is on no interface of this node")

    def _check_underlay_mtu(self, ipr: Any, net: DesiredNetwork, underlay_ip: str) -> None:
        link = self._underlay_link(ipr, underlay_ip)
        underlay_mtu = int(link.get("IFLA_MTU"))
        # an IPv6 outer header is 20 bytes longer than an IPv4 one
        overhead = VXLAN_OVERHEAD + (20 if ipaddress.ip_address(underlay_ip).version == 6 else 0)
        if net.mtu + overhead > underlay_mtu:
            raise NetworkError(
                f"tenant network {net.id}: MTU {net.mtu} is too large: VXLAN needs "
                f"{overhead} bytes below the underlay MTU {underlay_mtu} of "
                f"{link.get('IFLA_IFNAME')} ({underlay_ip}); use at most "
                f"{underlay_mtu - overhead}")

    def _check_physical(self, ipr: Any, net: DesiredNetwork) -> None:
        assert net.physical is not None  # check_desired
        link = self._link(ipr, net.physical)
        if link is None:
            raise NetworkError(f"provider network {net.id}: no interface {net.physical!r}")
        if net.mtu > int(link.get("IFLA_MTU")):
            raise NetworkError(
                f"provider network {net.id}: MTU {net.mtu} is larger than the MTU "
                f"{link.get('IFLA_MTU')} of {net.physical}")

    def _claim(self, ipr: Any, name: str, net: DesiredNetwork) -> Link | None:
        """The existing device `name` if it is ours; NetworkError if someone else's."""
        link = self._link(ipr, name)
        if link is not None and not self._ours(link, net.id):
            raise NetworkError(f"network {net.id}: device {name} exists but was not made "
                               "by this driver; refusing to touch it")
        return link

    def _ensure_bridge(self, ipr: Any, net: DesiredNetwork, revert: Reverter) -> int:
        name = bridge_name(net.id)
        link = self._claim(ipr, name, net)
        if link is None:
            ipr.link("add", ifname=name, kind="bridge", br_stp_state=0, br_forward_delay=0)
            index: int = ipr.link_lookup(ifname=name)[0]
            revert.add(lambda: self._delete(ipr, index), f"delete bridge {name}")
            ipr.link("set", index=index, ifalias=alias_of(net.id))
        else:
            index = link["index"]
        return index

    def _ensure_vxlan(self, ipr: Any, net: DesiredNetwork, underlay_ip: str,
                      bridge: int, revert: Reverter) -> int:
        name = vxlan_name(net.id)
        link = self._claim(ipr, name, net)
        if link is not None and not self._vxlan_matches(link, net, underlay_ip):
            log.info("recreating %s: its VXLAN settings changed", name)
            self._delete(ipr, link["index"])
            link = None
        if link is None:
            self._check_vni_free(ipr, net)
            local = ("vxlan_local6" if ipaddress.ip_address(underlay_ip).version == 6
                     else "vxlan_local")
            ipr.link("add", ifname=name, kind="vxlan", vxlan_id=net.vni,
                     vxlan_port=VXLAN_PORT, vxlan_learning=1, mtu=net.mtu,
                     **{local: underlay_ip})
            index: int = ipr.link_lookup(ifname=name)[0]
            revert.add(lambda: self._delete(ipr, index), f"delete vxlan {name}")
            ipr.link("set", index=index, ifalias=alias_of(net.id))
        else:
            index = link["index"]
        ipr.link("set", index=index, master=bridge, mtu=net.mtu, state="up")
        return index

    @staticmethod
    def _check_vni_free(ipr: Any, net: DesiredNetwork) -> None:
        """NetworkError naming the device that already uses the network's VNI here (the
        kernel only answers "File exists"); nothing is changed."""
        for other in ipr.get_links():
            data = _info_data(other)
            if (_kind(other) == "vxlan" and data is not None
                    and data.get("IFLA_VXLAN_ID") == net.vni
                    and (data.get("IFLA_VXLAN_PORT") or VXLAN_PORT) == VXLAN_PORT):
                raise NetworkError(
                    f"tenant network {net.id}: VNI {net.vni} is already used by device "
                    f"{other.get('IFLA_IFNAME')} on this node (UDP port {VXLAN_PORT}); "
                    "remove that device or give the network another VNI")

    @staticmethod
    def _vxlan_matches(link: Link, net: DesiredNetwork, underlay_ip: str) -> bool:
        data = _info_data(link)
        if _kind(link) != "vxlan" or data is None:
            return False
        local = data.get("IFLA_VXLAN_LOCAL") or data.get("IFLA_VXLAN_LOCAL6")
        return bool(
            data.get("IFLA_VXLAN_ID") == net.vni
            and local and ipaddress.ip_address(local) == ipaddress.ip_address(underlay_ip)
            and data.get("IFLA_VXLAN_PORT") == VXLAN_PORT
            and bool(data.get("IFLA_VXLAN_LEARNING"))
            and not data.get("IFLA_VXLAN_GROUP") and not data.get("IFLA_VXLAN_GROUP6"))

    def _sync_peers(self, ipr: Any, net: DesiredNetwork, vxlan: int) -> None:
        """Exactly one all-zeros forwarding entry per peer: add the missing, drop the stale.

        Entries learned from a node no longer a peer go too, so no frame is sent to it.
        """
        wanted = {str(ipaddress.ip_address(p)) for p in net.peers}
        present = set()
        for entry in ipr.fdb("dump", ifindex=vxlan):
            dst = entry.get("NDA_DST")
            if entry["ifindex"] != vxlan or not dst:
                continue
            dst = str(ipaddress.ip_address(dst))
            mac = entry.get("NDA_LLADDR")
            if mac == ZERO_MAC:
                present.add(dst)
            elif dst not in wanted and mac:
                ipr.fdb("del", ifindex=vxlan, lladdr=mac, dst=dst)
        for dst in sorted(present - wanted):
            ipr.fdb("del", ifindex=vxlan, lladdr=ZERO_MAC, dst=dst)
        for dst in sorted(wanted - present):
            ipr.fdb("append", ifindex=vxlan, lladdr=ZERO_MAC, dst=dst)

    def _ensure_vlan(self, ipr: Any, net: DesiredNetwork, bridge: int,
                     revert: Reverter) -> None:
        assert net.physical is not None
        name = vlan_name(net.id)
        physical: int = ipr.link_lookup(ifname=net.physical)[0]
        link = self._claim(ipr, name, net)
        data = _info_data(link) if link is not None else None
        if link is not None and (_kind(link) != "vlan" or data is None
                                 or data.get("IFLA_VLAN_ID") != net.vlan
                                 or link.get("IFLA_LINK") != physical):
            log.info("recreating %s: its VLAN settings changed", name)
            self._delete(ipr, link["index"])
            link = None
        if link is None:
            ipr.link("add", ifname=name, kind="vlan", link=physical, vlan_id=net.vlan,
                     mtu=net.mtu)
            index: int = ipr.link_lookup(ifname=name)[0]
            revert.add(lambda: self._delete(ipr, index), f"delete vlan {name}")
            ipr.link("set", index=index, ifalias=alias_of(net.id))
        else:
            index = link["index"]
        ipr.link("set", index=index, master=bridge, mtu=net.mtu, state="up")
