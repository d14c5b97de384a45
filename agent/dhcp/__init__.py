"""DHCPv4 for the VM ports of this node's tenant networks: fixed bindings, answered at the port."""
