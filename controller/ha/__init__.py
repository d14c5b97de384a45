"""High availability: what the controller needs to restart VMs of a lost node elsewhere
(first piece: the power control of a node through its BMC)."""
