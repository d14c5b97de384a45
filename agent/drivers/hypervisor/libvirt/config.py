"""Typed libvirt domain XML: rendered from dataclasses with ElementTree, and parsed back.

Only what this platform sets is modelled. Parsing accepts the XML as libvirt
returns it (units normalized to KiB, addresses and defaults added).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent.drivers.hypervisor.base import RbdSource

NS = "https://vauban.dev/xmlns/instance/1"
NS_PREFIX = "vauban"
ET.register_namespace(NS_PREFIX, NS)  # so rendered XML says vauban:, not ns0:

VirtType = Literal["kvm", "qemu"]
DiskFormat = Literal["raw", "qcow2"]
CEPH_MON_PORT = 6789  # a monitor's port when libvirt's XML gives none (msgr v1)
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"

_MEMORY_UNITS_KIB = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "kb": 1000 / 1024,
                     "m": 1024, "mib": 1024, "mb": 1000**2 / 1024,
                     "g": 1024**2, "gib": 1024**2, "gb": 1000**3 / 1024}


def _local(tag: str) -> str:
    """Tag without its `{namespace}`: libvirt hands metadata back without it."""
    return tag.rsplit("}", 1)[-1]


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrib)
    if text is not None:
        el.text = text
    return el


@dataclass(frozen=True)
class InstanceMetadata:
    """Our own data in a domain's <metadata>: marks the domain as this platform's."""

    instance_id: str
    power_seq: int = 0
    labels: dict[str, str] = field(default_factory=dict)

    def to_element(self, *, namespaced: bool = True) -> ET.Element:
        """The <instance> element; `namespaced=False` is the form virDomainSetMetadata wants."""
        def q(tag: str) -> str:
            return f"{{{NS}}}{tag}" if namespaced else tag

        root = ET.Element(q("instance"))
        _sub(root, q("id"), self.instance_id)
        _sub(root, q("power-seq"), str(self.power_seq))
        labels = _sub(root, q("labels"))
        for key, value in sorted(self.labels.items()):
            _sub(labels, q("label"), value, key=key)
        return root

    def to_xml(self, *, namespaced: bool = True) -> str:
        return ET.tostring(self.to_element(namespaced=namespaced), encoding="unicode")

    @classmethod
    def from_element(cls, el: ET.Element) -> InstanceMetadata:
        """Parse an <instance> element, with or without our namespace; ValueError if malformed."""
        children = {_local(c.tag): c for c in el}
        id_el = children.get("id")
        if _local(el.tag) != "instance" or id_el is None or not (id_el.text or "").strip():
            raise ValueError("metadata <instance> without an <id>")
        seq_el = children.get("power-seq")
        power_seq = int((seq_el.text or "0").strip()) if seq_el is not None else 0
        labels: dict[str, str] = {}
        labels_el = children.get("labels")
        for label in labels_el if labels_el is not None else ():
            labels[label.get("key", "")] = label.text or ""
        return cls((id_el.text or "").strip(), power_seq, labels)

    @classmethod
    def from_xml(cls, xml: str) -> InstanceMetadata:
        return cls.from_element(ET.fromstring(xml))

    @classmethod
    def from_domain_xml(cls, xml: str) -> InstanceMetadata | None:
        """Our metadata in a whole domain XML, or None when the domain is not ours."""
        el = ET.fromstring(xml).find(f"metadata/{{{NS}}}instance")
        return cls.from_element(el) if el is not None else None


def relabel_domain_xml(xml: str, labels: dict[str, str]) -> str:
    """The domain XML with `labels` set in our metadata (the rest as it was); ValueError
    when the domain is not ours. Metadata is no part of the guest's ABI: a migration may
    carry a changed copy to the target."""
    root = ET.fromstring(xml)
    metadata = root.find("metadata")
    el = metadata.find(f"{{{NS}}}instance") if metadata is not None else None
    if metadata is None or el is None:
        raise ValueError("domain has no Vauban metadata")
    md = InstanceMetadata.from_element(el)
    updated = InstanceMetadata(md.instance_id, md.power_seq, {**md.labels, **labels})
    metadata.remove(el)
    metadata.append(updated.to_element())
    return ET.tostring(root, encoding="unicode")


@dataclass(frozen=True)
class DiskConfig:
    """A virtio disk: a file on the node (`type='file'`) or an RBD image (`type='network'`).

    An RBD disk names the libvirt secret holding its cephx key by usage; the key
    itself is never in the domain XML.
    """

    source: Path | RbdSource
    format: DiskFormat
    target: str
    readonly: bool = False
    bus: Literal["virtio", "scsi"] = "virtio"

    def to_element(self) -> ET.Element:
        if isinstance(self.source, RbdSource):
            disk = ET.Element("disk", {"type": "network", "device": "disk"})
            # writeback: librbd's own cache honours guest flushes; unmap: discards free space
            _sub(disk, "driver", name="qemu", type=self.format, cache="writeback",
                 discard="unmap")
            rbd = self.source
            source = _sub(disk, "source", protocol="rbd", name=f"{rbd.pool}/{rbd.image}")
            for host, port in rbd.monitors:
                _sub(source, "host", name=host, port=str(port))
            auth = _sub(disk, "auth", username=rbd.user)
            _sub(auth, "secret", type="ceph", usage=rbd.secret_usage)
        else:
            disk = ET.Element("disk", {"type": "file", "device": "disk"})
            # unmap: a guest's discards punch holes in the file (and its qcow2 clusters)
            _sub(disk, "driver", name="qemu", type=self.format,
                 **({} if self.readonly else {"discard": "unmap"}))
            _sub(disk, "source", file=str(self.source))
        _sub(disk, "target", dev=self.target, bus=self.bus)
        if self.readonly:
            _sub(disk, "readonly")
        return disk

    def to_xml(self) -> str:
        """The <disk> element alone, as virDomainAttachDeviceFlags wants it."""
        return ET.tostring(self.to_element(), encoding="unicode")

    @classmethod
    def from_element(cls, el: ET.Element) -> DiskConfig:
        """Parse a <disk> (ours or as libvirt returns it); ValueError for kinds we do not make."""
        driver, source, target = el.find("driver"), el.find("source"), el.find("target")
        if driver is None or source is None or target is None:
            raise ValueError("<disk> without driver, source or target")
        fmt = driver.get("type", "raw")
        if fmt not in ("raw", "qcow2"):
            raise ValueError(f"unsupported disk format {fmt!r}")
        kind = el.get("type", "file")
        if kind == "file":
            disk_source: Path | RbdSource = Path(source.get("file", ""))
        elif kind == "network":
            disk_source = _rbd_source(el, source)
        else:
            raise ValueError(f"unsupported disk type {kind!r}")
        return cls(disk_source, "qcow2" if fmt == "qcow2" else "raw",
                   target.get("dev", ""), el.find("readonly") is not None,
                   "scsi" if target.get("bus") == "scsi" else "virtio")

    @classmethod
    def from_xml(cls, xml: str) -> DiskConfig:
        return cls.from_element(ET.fromstring(xml))


def _rbd_source(disk: ET.Element, source: ET.Element) -> RbdSource:
    """The RbdSource of a network <disk>; libvirt may put <auth> in <source> or beside it."""
    if source.get("protocol") != "rbd":
        raise ValueError(f"unsupported network disk protocol {source.get('protocol')!r}")
    pool, sep, image = source.get("name", "").partition("/")
    if not sep or not pool or not image:
        raise ValueError(f"RBD disk name {source.get('name')!r} is not POOL/IMAGE")
    monitors = tuple((h.get("name", ""), int(h.get("port", str(CEPH_MON_PORT))))
                     for h in source.findall("host"))
    auth = source.find("auth")
    if auth is None:
        auth = disk.find("auth")
    secret = auth.find("secret") if auth is not None else None
    if auth is None or secret is None or secret.get("type") != "ceph" or not secret.get("usage"):
        raise ValueError(f"RBD disk {pool}/{image} without a ceph secret given by usage")
    return RbdSource(pool=pool, image=image, monitors=monitors, user=auth.get("username", ""),
                     secret_usage=secret.get("usage", ""))


def guest_agent_connected(domain_xml: str) -> bool:
    """Whether the live XML shows the guest agent's channel connected (libvirt tracks the
    guest end opening and closing its port)."""
    for channel in ET.fromstring(domain_xml).findall("devices/channel"):
        target = channel.find("target")
        if target is not None and target.get("name") == GUEST_AGENT_CHANNEL:
            return target.get("state") == "connected"
    return False


def disk_element_xml(domain_xml: str, target: str) -> str | None:
    """The <disk> element (any kind) whose target is `target` in a domain XML, or None."""
    for disk in ET.fromstring(domain_xml).findall("devices/disk"):
        target_el = disk.find("target")
        if target_el is not None and target_el.get("dev") == target:
            return ET.tostring(disk, encoding="unicode")
    return None


def parse_disks(xml: str) -> tuple[DiskConfig, ...]:
    """The disks (device='disk', not CD-ROMs) of a domain XML, in document order.

    ValueError when one of them is of a kind this platform does not make.
    """
    return tuple(DiskConfig.from_element(d)
                 for d in ET.fromstring(xml).findall("devices/disk[@device='disk']"))


@dataclass(frozen=True)
class NicConfig:
    """A virtio NIC whose tap libvirt plugs into a node bridge."""

    mac: str
    bridge: str
    mtu: int
    device: str

    def to_element(self) -> ET.Element:
        nic = ET.Element("interface", {"type": "bridge"})
        _sub(nic, "mac", address=self.mac)
        _sub(nic, "source", bridge=self.bridge)
        _sub(nic, "target", dev=self.device)
        _sub(nic, "model", type="virtio")
        _sub(nic, "mtu", size=str(self.mtu))
        return nic

    @classmethod
    def from_element(cls, el: ET.Element) -> NicConfig:
        def attr(path: str, name: str) -> str:
            found = el.find(path)
            return found.get(name, "") if found is not None else ""

        return cls(mac=attr("mac", "address"), bridge=attr("source", "bridge"),
                   mtu=int(attr("mtu", "size") or 1500), device=attr("target", "dev"))


@dataclass(frozen=True)
class HostdevConfig:
    """A PCI function (already bound to vfio-pci by the agent) or a vGPU given to the guest.

    managed='no': the agent binds and restores drivers itself, from its own
    record, instead of letting libvirt rebind on every start and stop.
    """

    kind: Literal["pci", "mdev"]
    address: str  # "0000:17:00.0" or an mdev UUID

    def to_element(self) -> ET.Element:
        attrs = {"mode": "subsystem", "type": self.kind, "managed": "no"}
        if self.kind == "mdev":
            attrs["model"] = "vfio-pci"
        dev = ET.Element("hostdev", attrs)
        source = _sub(dev, "source")
        if self.kind == "mdev":
            _sub(source, "address", uuid=self.address)
            return dev
        domain, bus, slot_fn = self.address.split(":")
        slot, function = slot_fn.split(".")
        _sub(source, "address", domain=f"0x{domain}", bus=f"0x{bus}", slot=f"0x{slot}",
             function=f"0x{function}")
        return dev

    @classmethod
    def from_element(cls, el: ET.Element) -> HostdevConfig:
        address = el.find("source/address")
        if address is None:
            raise ValueError("hostdev without a source address")
        if el.get("type") == "mdev":
            return cls("mdev", address.get("uuid", ""))
        parts = [int(address.get(k, "0"), 16) for k in ("domain", "bus", "slot", "function")]
        return cls("pci", "{:04x}:{:02x}:{:02x}.{:x}".format(*parts))


@dataclass(frozen=True)
class DomainConfig:
    """One domain as this platform defines it."""

    virt_type: VirtType  # "kvm" (hardware) or "qemu" (TCG emulation)
    name: str
    uuid: str
    memory_mib: int
    vcpus: int
    disks: tuple[DiskConfig, ...]
    console_log: Path
    metadata: InstanceMetadata
    machine: str = "pc"  # i440fx: the Debian cloud kernel has no AHCI driver for q35
    arch: str = "x86_64"
    nics: tuple[NicConfig, ...] = ()
    hostdevs: tuple[HostdevConfig, ...] = ()
    firmware: Literal["bios", "efi"] = "bios"
    secure_boot: bool = False  # efi on q35 only: libvirt picks a firmware that enforces it

    def to_element(self) -> ET.Element:
        dom = ET.Element("domain", {"type": self.virt_type})
        _sub(dom, "name", self.name)
        _sub(dom, "uuid", self.uuid)
        _sub(dom, "metadata").append(self.metadata.to_element())
        _sub(dom, "memory", str(self.memory_mib), unit="MiB")
        _sub(dom, "vcpu", str(self.vcpus))
        os_el = _sub(dom, "os", **({"firmware": "efi"} if self.firmware == "efi" else {}))
        _sub(os_el, "type", "hvm", arch=self.arch, machine=self.machine)
        if self.firmware == "efi":
            # libvirt picks the OVMF build and makes the VM's own NVRAM from its template
            wanted = _sub(os_el, "firmware")
            for name in ("secure-boot", "enrolled-keys"):
                _sub(wanted, "feature", enabled="yes" if self.secure_boot else "no", name=name)
        _sub(os_el, "boot", dev="hd")
        features = _sub(dom, "features")
        _sub(features, "acpi")  # without it a guest's poweroff only halts the CPU
        _sub(features, "apic")
        if self.secure_boot:
            _sub(features, "smm", state="on")  # the firmware's variables are guarded in SMM
        if self.hostdevs and self.virt_type == "kvm":
            # NVIDIA's consumer drivers refuse to start when they see a hypervisor (error 43)
            _sub(_sub(features, "kvm"), "hidden", state="on")
        if self.virt_type == "kvm":
            _sub(dom, "cpu", mode="host-passthrough")
        # Under TCG no <cpu>: QEMU's default model is the one every TCG build emulates.
        _sub(dom, "on_poweroff", "destroy")
        _sub(dom, "on_reboot", "restart")
        _sub(dom, "on_crash", "destroy")
        devices = _sub(dom, "devices")
        if any(d.bus == "scsi" for d in self.disks):
            _sub(devices, "controller", type="scsi", index="0", model="virtio-scsi")
        for disk in self.disks:
            devices.append(disk.to_element())
        for nic in self.nics:
            devices.append(nic.to_element())
        for hostdev in self.hostdevs:
            devices.append(hostdev.to_element())
        # a pty, live for a console session (libvirt's console stream), logged all along
        # by virtlogd; append: the log keeps earlier boots, so a restart does not erase the
        # evidence. libvirt makes it the domain's console too.
        serial = _sub(devices, "serial", type="pty")
        _sub(serial, "log", file=str(self.console_log), append="on")
        _sub(serial, "target", port="0")
        graphics = _sub(devices, "graphics", type="vnc", autoport="yes", listen="127.0.0.1")
        _sub(graphics, "listen", type="address", address="127.0.0.1")
        # the qemu-guest-agent's port (libvirt picks the socket): a guest with the agent
        # reports its addresses and OS, shuts down cleanly and freezes for snapshots
        channel = _sub(devices, "channel", type="unix")
        _sub(channel, "source", mode="bind")
        _sub(channel, "target", type="virtio", name=GUEST_AGENT_CHANNEL)
        rng = _sub(devices, "rng", model="virtio")
        _sub(rng, "backend", "/dev/urandom", model="random")
        # libvirt adds a balloon unless told not to; nothing here drives one.
        _sub(devices, "memballoon", model="none")
        return dom

    def to_xml(self) -> str:
        return ET.tostring(self.to_element(), encoding="unicode")

    @classmethod
    def from_xml(cls, xml: str) -> DomainConfig:
        """Parse a domain XML (ours or as libvirt returns it); ValueError if it is not ours."""
        root = ET.fromstring(xml)
        md_el = root.find(f"metadata/{{{NS}}}instance")
        if md_el is None:
            raise ValueError("domain has no Vauban metadata")
        virt_type = root.get("type")
        if virt_type not in ("kvm", "qemu"):
            raise ValueError(f"unsupported domain type {virt_type!r}")
        os_type = root.find("os/type")
        # the log of a pty; a domain defined before consoles were live logs to a file
        serial_log = root.find("devices/serial/log")
        serial_src = root.find("devices/serial[@type='file']/source")
        console_log = Path(serial_log.get("file", "")) if serial_log is not None else \
            Path(serial_src.get("path", "")) if serial_src is not None else Path()
        return cls(
            virt_type="kvm" if virt_type == "kvm" else "qemu",
            name=_text(root, "name"),
            uuid=_text(root, "uuid"),
            memory_mib=_memory_mib(root),
            vcpus=int(_text(root, "vcpu")),
            disks=tuple(DiskConfig.from_element(d)
                        for d in root.findall("devices/disk[@device='disk']")),
            console_log=console_log,
            metadata=InstanceMetadata.from_element(md_el),
            machine=os_type.get("machine", "pc") if os_type is not None else "pc",
            arch=os_type.get("arch", "x86_64") if os_type is not None else "x86_64",
            nics=tuple(NicConfig.from_element(n)
                       for n in root.findall("devices/interface[@type='bridge']")),
            hostdevs=tuple(HostdevConfig.from_element(h) for h in root.findall("devices/hostdev")),
            firmware="efi" if os_el_firmware(root) == "efi" else "bios",
            secure_boot=_secure_boot(root),
        )


def os_el_firmware(root: ET.Element) -> str:
    """"efi" or "bios": asked for (<os firmware='efi'>) or, once libvirt has filled the
    firmware in, the loader it chose (pflash)."""
    os_el = root.find("os")
    if os_el is None:
        return "bios"
    loader = os_el.find("loader")
    if os_el.get("firmware") == "efi" or (loader is not None and loader.get("type") == "pflash"):
        return "efi"
    return "bios"


def _secure_boot(root: ET.Element) -> bool:
    for feature in root.findall("os/firmware/feature"):
        if feature.get("name") == "secure-boot":
            return feature.get("enabled") == "yes"
    loader = root.find("os/loader")
    return loader is not None and loader.get("secure") == "yes"


def _text(root: ET.Element, path: str) -> str:
    el = root.find(path)
    if el is None or el.text is None:
        raise ValueError(f"domain XML lacks <{path}>")
    return el.text.strip()


def _memory_mib(root: ET.Element) -> int:
    el = root.find("memory")
    if el is None or el.text is None:
        raise ValueError("domain XML lacks <memory>")
    unit = el.get("unit", "KiB").lower()
    if unit not in _MEMORY_UNITS_KIB:
        raise ValueError(f"unknown memory unit {unit!r}")
    return round(int(el.text) * _MEMORY_UNITS_KIB[unit] / 1024)
