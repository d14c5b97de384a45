"""The fleet: servers the controller reaches over SSH (host keys pinned), the inventory
made from them, and rollout jobs that run the playbooks on them with ansible-runner."""
