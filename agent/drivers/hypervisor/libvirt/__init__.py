"""The libvirt/QEMU hypervisor driver, split like Nova's: config (XML), host, guest, driver."""

from agent.drivers.hypervisor.libvirt.driver import LibvirtDriver

__all__ = ["LibvirtDriver"]
