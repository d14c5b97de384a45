"""Network drivers: a Linux bridge per network, with a VLAN or VXLAN uplink."""
