"""One libvirt domain: its state, power actions with deadlines, metadata, devices, removal."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import libvirt

from agent.drivers.hypervisor.base import HypervisorError
from agent.drivers.hypervisor.libvirt.config import (
    NS,
    NS_PREFIX,
    InstanceMetadata,
    disk_element_xml,
    guest_agent_connected,
)
from agent.drivers.hypervisor.libvirt.host import Host
from agent.protocol import GuestInfo, GuestInterface

T = TypeVar("T")

POLL_INTERVAL = 0.1
DEVICE_POLL_INTERVAL = 0.2  # reading the live XML costs more than reading the state
BUTTON_REPEAT_S = 5.0  # how often the ACPI power button is pressed again during a stop
FORCE_OFF_TIMEOUT = 30.0  # how long a forced power-off may take to show as "shut off"
GUEST_AGENT_TIMEOUT_S = 3  # a guest agent that does not answer in time is taken as absent
FSFREEZE_TIMEOUT_S = 10  # a freeze flushes the guest's dirty data first: more than a question

# Also drop managed save images, snapshot/checkpoint metadata and UEFI vars:
# without these flags libvirt refuses to undefine a domain that has any of them.
UNDEFINE_FLAGS = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                  | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                  | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                  | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)


class Guest:
    """Wraps one virDomain; every libvirt error leaves as a HypervisorError."""

    def __init__(self, host: Host, domain: libvirt.virDomain) -> None:
        self._host = host
        self._dom = domain

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except libvirt.libvirtError as e:
            raise self._host.error(f"{what} {self.name}", e) from e

    @property
    def name(self) -> str:
        return str(self._dom.name())

    @property
    def uuid(self) -> str:
        return str(self._dom.UUIDString())

    def xml(self, *, inactive: bool = False) -> str:
        """The domain XML, live (or persistent when `inactive`)."""
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        return str(self._call("read XML of", lambda: self._dom.XMLDesc(flags)))

    def is_running(self) -> bool:
        """Whether a QEMU process exists for it (running, paused or shutting down)."""
        return bool(self._call("read state of", self._dom.isActive))

    def is_persistent(self) -> bool:
        """Whether it is defined; False for a domain arriving by a live migration."""
        return bool(self._call("read persistence of", self._dom.isPersistent))

    def metadata(self) -> InstanceMetadata | None:
        """Our metadata, or None when the domain does not carry it (it is not ours)."""
        def read() -> str | None:
            try:
                return str(self._dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS, 0))
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                    return None
                raise

        xml = self._call("read metadata of", read)
        return InstanceMetadata.from_xml(xml) if xml is not None else None

    def set_metadata(self, md: InstanceMetadata) -> None:
        """Replace our metadata in the persistent definition and, if running, the live one."""
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        if self.is_running():
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        # libvirt puts the element and its children into NS itself; it wants them plain.
        xml = md.to_xml(namespaced=False)
        self._call("set metadata of", lambda: self._dom.setMetadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml, NS_PREFIX, NS, flags))

    def start(self) -> None:
        """Start it; afterwards it is running. Starting a running domain is a no-op."""
        if self.is_running():
            return
        try:
            self._dom.create()
        except libvirt.libvirtError as e:
            # Someone else may have started it between our check and our call.
            if e.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and self.is_running():
                return
            raise self._host.error(f"start {self.name}", e) from e

    def wait_stopped(self, timeout: float) -> bool:
        """Poll until it is shut off or `timeout` seconds passed; whether it is shut off."""
        deadline = time.monotonic() + timeout
        while self.is_running():
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL)
        return True

    def destroy(self) -> None:
        """Force it off (like pulling the plug); afterwards it is shut off. No-op if it is."""
        if not self.is_running():
            return
        try:
            self._dom.destroy()
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:  # already off
                raise self._host.error(f"force off {self.name}", e) from e
        if not self.wait_stopped(FORCE_OFF_TIMEOUT):
            raise HypervisorError(f"{self.name} still running {FORCE_OFF_TIMEOUT:.0f}s after "
                                  "a forced power-off", retryable=True)

    def shutdown(self, grace_seconds: float) -> bool:
        """Press the ACPI power button, wait up to `grace_seconds`, then force it off.

        Afterwards it is shut off. Returns True if the guest powered off by itself,
        False if it had to be forced (or was already off: True).
        """
        deadline = time.monotonic() + grace_seconds
        while self.is_running():
            left = deadline - time.monotonic()
            if left <= 0:
                self.destroy()
                return False
            # pressed again now and then: a guest still booting may miss the first press
            self._press_power_button()
            if self.wait_stopped(min(left, BUTTON_REPEAT_S)):
                return True
        return True

    def reset(self) -> None:
        """Reset it like the reset button (no shutdown, the guest gets no say).

        A shut-off domain raises HypervisorError."""
        if not self.is_running():
            raise HypervisorError(f"cannot reset {self.name}: it is not running")
        self._call("reset", lambda: self._dom.reset(0))

    def _press_power_button(self) -> None:
        """Ask the guest to power off: through its guest agent when one is connected
        (libvirt falls back to the ACPI button when the agent fails), else the button."""
        flags = libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN
        try:
            if guest_agent_connected(self.xml()):
                self._set_agent_timeout()
                flags |= libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT
        except HypervisorError:
            pass  # stopped meanwhile: the button below says so, or does nothing
        try:
            self._dom.shutdownFlags(flags)
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:  # stopped meanwhile
                raise self._host.error(f"shut down {self.name}", e) from e

    def _set_agent_timeout(self, seconds: int = GUEST_AGENT_TIMEOUT_S) -> None:
        try:
            self._dom.agentSetResponseTimeout(seconds, 0)
        except libvirt.libvirtError:
            pass  # an older libvirt: its default timeout applies

    def fs_freeze(self) -> int:
        """Freeze every filesystem of the guest through its agent (guest-fsfreeze-freeze),
        waiting at most FSFREEZE_TIMEOUT_S; how many it froze. HypervisorError when the
        agent failed or did not answer in time (it may still freeze them: thaw)."""
        self._set_agent_timeout(FSFREEZE_TIMEOUT_S)
        return int(self._call("freeze the filesystems of", lambda: self._dom.fsFreeze(None, 0)))

    def fs_thaw(self) -> int:
        """Thaw the guest's filesystems through its agent (guest-fsfreeze-thaw), waiting at
        most FSFREEZE_TIMEOUT_S; how many it thawed (0: none was frozen). HypervisorError
        when the agent failed or did not answer in time."""
        self._set_agent_timeout(FSFREEZE_TIMEOUT_S)
        return int(self._call("thaw the filesystems of", lambda: self._dom.fsThaw(None, 0)))

    def agent_info(self) -> GuestInfo | None:
        """What the guest agent says of the guest's OS and network interfaces; None when
        it did not answer within GUEST_AGENT_TIMEOUT_S (or there is none)."""
        self._set_agent_timeout()
        try:
            interfaces = self._dom.interfaceAddresses(
                libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT, 0)
            info = self._dom.guestInfo(libvirt.VIR_DOMAIN_GUEST_INFO_OS, 0)
        except libvirt.libvirtError:
            return None  # no agent in the guest after all, or a busy one: asked again later
        return guest_info(info, interfaces)

    def undefine(self) -> None:
        """Force it off if needed and remove its definition (and managed save, snapshots, nvram).

        Files its disks point at are left alone.
        """
        self.destroy()
        try:
            self._dom.undefineFlags(UNDEFINE_FLAGS)
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # already gone
                raise self._host.error(f"undefine {self.name}", e) from e

    # ------------------------------------------------------------ devices

    def disk_xml(self, target: str, *, inactive: bool = False) -> str | None:
        """The <disk> at `target` as libvirt reports it (live, or persistent when
        `inactive`), or None when there is none."""
        return disk_element_xml(self.xml(inactive=inactive), target)

    @staticmethod
    def _affect(live: bool, config: bool) -> int:
        flags = 0
        if live:
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        if config:
            flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
        return flags

    def attach_device(self, xml: str, *, live: bool, config: bool) -> None:
        """Add the device in `xml` to the running guest and/or the persistent definition.

        libvirt applies both or neither, except that the definition is saved
        after the live attach: should that save fail, the device stays attached live.
        """
        flags = self._affect(live, config)
        self._call("attach a device to", lambda: self._dom.attachDeviceFlags(xml, flags))

    def detach_device(self, xml: str, *, live: bool, config: bool) -> None:
        """Ask for the device in `xml` (matched by its target) to be removed.

        The persistent definition changes at once; the live removal is only
        requested (the guest must release the device: see wait_disk_released).
        """
        flags = self._affect(live, config)
        self._call("detach a device from", lambda: self._dom.detachDeviceFlags(xml, flags))

    def block_capacity(self, target: str) -> int:
        """The size in bytes of the disk at `target` as the running guest has it."""
        info = self._call(f"read disk {target} of", lambda: self._dom.blockInfo(target))
        return int(info[0])

    def block_resize(self, target: str, size_bytes: int) -> None:
        """Set the running guest's disk at `target` to `size_bytes` (QEMU block_resize).

        QEMU resizes the image itself to that size too: callers must never pass a
        smaller size than the guest has.
        """
        self._call(f"grow disk {target} of", lambda: self._dom.blockResize(
            target, size_bytes, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES))

    def wait_disk_released(self, target: str, timeout: float) -> bool:
        """Poll the live XML until the disk at `target` is gone (libvirt removes it on
        QEMU's DEVICE_DELETED) or `timeout` seconds passed; whether it is gone."""
        deadline = time.monotonic() + timeout
        while self.is_running() and self.disk_xml(target) is not None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(DEVICE_POLL_INTERVAL)
        return True


def guest_info(os_info: dict[str, str], interfaces: dict[str, dict[str, object]]) -> GuestInfo:
    """GuestInfo from libvirt's guestInfo(OS) and interfaceAddresses(AGENT) answers
    (loopback left out; what does not fit the bounds is cut, never refused)."""
    found = []
    for name, iface in sorted(interfaces.items()):
        if name == "lo":
            continue
        addrs = iface.get("addrs") or []
        addresses = [f"{a['addr']}/{a['prefix']}" for a in addrs  # type: ignore[attr-defined]
                     if isinstance(a, dict) and a.get("addr")]
        mac = iface.get("hwaddr")
        found.append(GuestInterface(name=name[:64], mac=str(mac)[:64] if mac else None,
                                    addresses=addresses[:64]))

    def field(key: str, limit: int) -> str | None:
        value = os_info.get(key)
        return str(value)[:limit] if value else None

    return GuestInfo(os_id=field("os.id", 64), os_name=field("os.pretty-name", 256),
                     os_version=field("os.version-id", 64),
                     kernel_release=field("os.kernel-release", 128), interfaces=found[:64])
