"""The lab's private network: one bridge on the host, one network namespace per node.

The host holds the bridge's first address (where the controller and Ceph are reached);
each node's namespace has `eth0`, a veth whose peer sits on the bridge, with one
address and no default route, so a node reaches the lab subnet and nothing else.
Every function removes what it made when it fails partway.
"""

from __future__ import annotations

import ipaddress

from pyroute2 import IPRoute, NetlinkError, netns


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LookupError(f"no interface {ifname}")
    return int(found[0])


def link_exists(ifname: str) -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=ifname))


def subnet_user(subnet: ipaddress.IPv4Network) -> str | None:
    """The host interface holding an address inside `subnet` or whose network overlaps
    it (another lab up, or one not taken down), or None when the subnet is free here."""
    with IPRoute() as ipr:
        for msg in ipr.get_addr(family=2):
            held = ipaddress.IPv4Interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
            if held.network.overlaps(subnet):
                links = ipr.get_links(msg["index"])
                return str(links[0].get_attr("IFLA_IFNAME")) if links else f"#{msg['index']}"
    return None


def make_bridge(name: str, host_address: ipaddress.IPv4Interface) -> None:
    """The bridge `name`, up, with the host's address on it. FileExistsError if a link
    of that name exists (another lab, or one not taken down)."""
    with IPRoute() as ipr:
        if ipr.link_lookup(ifname=name):
            raise FileExistsError(f"interface {name} exists already: is a lab up? "
                                  "(make lab-down removes it)")
        ipr.link("add", ifname=name, kind="bridge", br_stp_state=0, br_forward_delay=0)
        try:
            index = _index(ipr, name)
            ipr.addr("add", index=index, address=str(host_address.ip),
                     prefixlen=host_address.network.prefixlen)
            ipr.link("set", index=index, state="up")
        except Exception:
            ipr.link("del", index=_index(ipr, name))
            raise


def remove_link(name: str) -> bool:
    """Delete the link `name` if it exists; True if one was deleted."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return False
        try:
            ipr.link("del", index=found[0])
        except NetlinkError as e:
            if e.code != 19:  # ENODEV: gone meanwhile
                raise
        return True


def make_node_namespace(ns: str, veth: str, bridge: str,
                        address: ipaddress.IPv4Interface) -> None:
    """Namespace `ns` with loopback up and `eth0` (its host end `veth` on `bridge`)
    holding `address`, with no route but the lab subnet's."""
    netns.create(ns)
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname=veth, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns})
            ipr.link("set", index=_index(ipr, veth), master=_index(ipr, bridge), state="up")
        with IPRoute(netns=ns) as ipr:
            ipr.link("set", index=_index(ipr, "lo"), state="up")
            eth0 = _index(ipr, "eth0")
            ipr.addr("add", index=eth0, address=str(address.ip),
                     prefixlen=address.network.prefixlen)
            ipr.link("set", index=eth0, state="up")
    except Exception:
        remove_link(veth)
        netns.remove(ns)
        raise


def namespace_exists(ns: str) -> bool:
    return ns in netns.listnetns()


def remove_namespace(ns: str) -> bool:
    """Remove the namespace's name (its veth goes with it once no process lives in it).
    True if there was one."""
    if not namespace_exists(ns):
        return False
    netns.remove(ns)
    return True
