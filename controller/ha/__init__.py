"""High availability: node loss detection, fencing (BMC power, Ceph blocklist) and
restarts of HA VMs elsewhere (docs/design/ha-plan.md)."""
