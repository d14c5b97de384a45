"""High availability: node loss detection, fencing and restarts (docs/design/ha-plan.md)."""
