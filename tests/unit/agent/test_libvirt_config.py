"""Domain XML rendered from the typed config, and parsed back (also as libvirt returns it)."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from agent.drivers.hypervisor.base import DiskSpec, HostdevSpec, RbdSource, VmSpec
from agent.drivers.hypervisor.libvirt import LibvirtDriver
from agent.drivers.hypervisor.libvirt.config import (
    NS,
    DiskConfig,
    DomainConfig,
    InstanceMetadata,
    disk_element_xml,
    guest_agent_connected,
    parse_disks,
)
from agent.drivers.hypervisor.libvirt.driver import disk_config, disk_spec
from agent.drivers.hypervisor.libvirt.guest import guest_info
from agent.drivers.hypervisor.libvirt.secrets import decode_key, secret_xml

VM_ID = "6f1c0d5e-5b5e-4d8e-9a36-0d7c3f1b2a10"
RBD = RbdSource(pool="vms", image="vol-7", monitors=(("127.0.0.1", 6789), ("::1", 3300)),
                user="vauban-node", secret_usage="vauban/ceph/region-1")


def at(el: ET.Element, path: str) -> ET.Element:
    found = el.find(path)
    assert found is not None, f"no <{path}>"
    return found


def make_config(virt_type: str = "qemu", **overrides: object) -> DomainConfig:
    values: dict[str, object] = dict(
        virt_type=virt_type,
        name="web-1",
        uuid=VM_ID,
        memory_mib=256,
        vcpus=2,
        disks=(
            DiskConfig(Path("/srv/disks/web-1/root.qcow2"), "qcow2", "vda"),
            DiskConfig(Path("/srv/disks/web-1/seed.raw"), "raw", "vdb", readonly=True),
        ),
        console_log=Path("/srv/logs/web-1.log"),
        metadata=InstanceMetadata(VM_ID, 3, {"team": "db", "tier": "<gold & \"x\">"}),
    )
    values.update(overrides)
    return DomainConfig(**values)  # type: ignore[arg-type]


def test_tcg_domain_renders_every_element() -> None:
    root = ET.fromstring(make_config("qemu").to_xml())

    assert root.tag == "domain" and root.get("type") == "qemu"
    assert root.findtext("name") == "web-1"
    assert root.findtext("uuid") == VM_ID
    assert at(root, "memory").get("unit") == "MiB" and root.findtext("memory") == "256"
    assert root.findtext("vcpu") == "2"
    assert root.findtext("os/type") == "hvm"
    assert at(root, "os/boot").get("dev") == "hd"
    assert root.find("features/acpi") is not None and root.find("features/apic") is not None
    assert root.find("cpu") is None  # TCG: QEMU's default CPU model
    disks = root.findall("devices/disk")
    assert [(at(d, "target").get("dev"), at(d, "target").get("bus")) for d in disks] == [
        ("vda", "virtio"), ("vdb", "virtio")]
    assert [at(d, "driver").get("type") for d in disks] == ["qcow2", "raw"]
    assert at(disks[0], "source").get("file") == "/srv/disks/web-1/root.qcow2"
    assert disks[0].find("readonly") is None and disks[1].find("readonly") is not None
    serial = at(root, "devices/serial")
    # a pty for live consoles, logged to the file all the same (libvirt adds the console)
    assert serial.get("type") == "pty"
    assert at(serial, "log").get("file") == "/srv/logs/web-1.log"
    assert at(serial, "log").get("append") == "on"
    graphics = at(root, "devices/graphics")
    assert graphics.get("type") == "vnc" and graphics.get("autoport") == "yes"
    assert graphics.get("listen") == "127.0.0.1"
    assert at(graphics, "listen").get("address") == "127.0.0.1"
    assert at(root, "devices/rng").get("model") == "virtio"
    assert at(root, "devices/memballoon").get("model") == "none"
    channel = at(root, "devices/channel")  # the guest agent's port, its socket libvirt's
    assert channel.get("type") == "unix" and at(channel, "source").get("mode") == "bind"
    assert at(channel, "target").attrib == {"type": "virtio", "name": "org.qemu.guest_agent.0"}


def test_the_guest_agent_counts_as_connected_only_when_libvirt_says_so() -> None:
    live = make_config().to_xml()
    assert not guest_agent_connected(live)  # as defined: no state yet
    for state, connected in (("connected", True), ("disconnected", False)):
        xml = live.replace('name="org.qemu.guest_agent.0"',
                           f'name="org.qemu.guest_agent.0" state="{state}"')
        assert guest_agent_connected(xml) is connected


def test_guest_info_keeps_the_guests_own_view_without_loopback() -> None:
    info = guest_info(
        {"os.id": "debian", "os.pretty-name": "Debian GNU/Linux 12 (bookworm)",
         "os.version-id": "12", "os.kernel-release": "6.1.0-57-cloud-amd64"},
        {"lo": {"hwaddr": "00:00:00:00:00:00", "addrs": [{"addr": "127.0.0.1", "prefix": 8}]},
         "eth0": {"hwaddr": "52:54:00:12:34:56", "addrs": [
             {"type": 0, "addr": "10.77.0.10", "prefix": 24},
             {"type": 1, "addr": "fe80::5054:ff:fe12:3456", "prefix": 64}]},
         "eth1": {"hwaddr": None, "addrs": None}})
    assert (info.os_id, info.os_name, info.os_version, info.kernel_release) == (
        "debian", "Debian GNU/Linux 12 (bookworm)", "12", "6.1.0-57-cloud-amd64")
    assert [(i.name, i.mac, i.addresses) for i in info.interfaces] == [
        ("eth0", "52:54:00:12:34:56", ["10.77.0.10/24", "fe80::5054:ff:fe12:3456/64"]),
        ("eth1", None, [])]


def test_kvm_domain_passes_the_host_cpu_through() -> None:
    root = ET.fromstring(make_config("kvm").to_xml())

    assert root.get("type") == "kvm"
    assert at(root, "cpu").get("mode") == "host-passthrough"


def test_metadata_is_in_our_namespace_with_our_prefix() -> None:
    xml = make_config().to_xml()
    root = ET.fromstring(xml)

    instance = root.find(f"metadata/{{{NS}}}instance")
    assert instance is not None
    assert instance.findtext(f"{{{NS}}}id") == VM_ID
    assert instance.findtext(f"{{{NS}}}power-seq") == "3"
    assert 'xmlns:vauban="https://vauban.dev/xmlns/instance/1"' in xml


def test_round_trip_keeps_everything() -> None:
    for virt_type in ("qemu", "kvm"):
        config = make_config(virt_type)
        assert DomainConfig.from_xml(config.to_xml()) == config


def test_labels_with_markup_characters_survive() -> None:
    config = make_config()
    parsed = DomainConfig.from_xml(config.to_xml())
    assert parsed.metadata.labels == {"team": "db", "tier": "<gold & \"x\">"}


# Shape of `virsh dumpxml` for a domain we defined: units in KiB, defaults and
# addresses added, metadata re-serialized by libvirt.
LIBVIRT_DUMP = f"""<domain type='qemu' id='4'>
  <name>web-1</name>
  <uuid>{VM_ID}</uuid>
  <metadata>
    <vauban:instance xmlns:vauban="{NS}">
      <vauban:id>{VM_ID}</vauban:id>
      <vauban:power-seq>9</vauban:power-seq>
      <vauban:labels>
        <vauban:label key="team">db</vauban:label>
      </vauban:labels>
    </vauban:instance>
  </metadata>
  <memory unit='KiB'>262144</memory>
  <currentMemory unit='KiB'>262144</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/srv/disks/web-1/root.qcow2' index='1'/>
      <backingStore type='file' index='2'>
        <format type='raw'/>
        <source file='/srv/images/abc.raw'/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>
    </disk>
    <serial type='file'>
      <source path='/srv/logs/web-1.log' append='on'/>
      <target type='isa-serial' port='0'><model name='isa-serial'/></target>
    </serial>
    <console type='file'>
      <source path='/srv/logs/web-1.log' append='on'/>
      <target type='serial' port='0'/>
    </console>
  </devices>
</domain>"""


def test_parses_domain_xml_as_libvirt_returns_it() -> None:
    config = DomainConfig.from_xml(LIBVIRT_DUMP)

    assert config.virt_type == "qemu"
    assert config.memory_mib == 256
    assert config.vcpus == 2
    assert config.machine == "pc-i440fx-7.2"
    assert config.disks == (DiskConfig(Path("/srv/disks/web-1/root.qcow2"), "qcow2", "vda"),)
    assert config.console_log == Path("/srv/logs/web-1.log")
    assert config.metadata == InstanceMetadata(VM_ID, 9, {"team": "db"})


def test_metadata_as_get_metadata_returns_it_without_namespace() -> None:
    plain = f"<instance><id>{VM_ID}</id><power-seq>4</power-seq><labels/></instance>"

    assert InstanceMetadata.from_xml(plain) == InstanceMetadata(VM_ID, 4, {})


def test_metadata_for_set_metadata_is_plain_and_parses_back() -> None:
    md = InstanceMetadata(VM_ID, 5, {"a": "b"})
    plain = md.to_xml(namespaced=False)

    assert NS not in plain
    assert InstanceMetadata.from_xml(plain) == md


def test_foreign_domain_has_no_metadata() -> None:
    foreign = "<domain type='kvm'><name>other</name><metadata><x:y xmlns:x='urn:x'/>" \
              "</metadata><memory>1024</memory><vcpu>1</vcpu></domain>"

    assert InstanceMetadata.from_domain_xml(foreign) is None
    with pytest.raises(ValueError, match="no Vauban metadata"):
        DomainConfig.from_xml(foreign)


def test_metadata_without_id_is_rejected() -> None:
    with pytest.raises(ValueError, match="without an <id>"):
        InstanceMetadata.from_xml("<instance><power-seq>1</power-seq></instance>")


def test_driver_maps_spec_to_config_by_acceleration() -> None:
    spec = VmSpec(id=VM_ID, name="web-1", vcpus=1, memory_mib=128,
                  disks=(DiskSpec(Path("/d/root.qcow2"), "qcow2", "vda"),),
                  console_log=Path("/l/c.log"), power_seq=2, labels={"k": "v"})

    tcg = LibvirtDriver(accelerated=False).domain_config(spec)
    kvm = LibvirtDriver(accelerated=True).domain_config(spec)

    assert tcg.virt_type == "qemu" and kvm.virt_type == "kvm"
    assert tcg.metadata == InstanceMetadata(VM_ID, 2, {"k": "v"})
    assert tcg.disks == (DiskConfig(Path("/d/root.qcow2"), "qcow2", "vda"),)
    assert LibvirtDriver(accelerated=True).info().accelerated is True


# ---------------------------------------------------------------- disks


def test_rbd_disk_renders_as_a_network_disk() -> None:
    disk = ET.fromstring(DiskConfig(RBD, "raw", "vdc").to_xml())

    assert (disk.tag, disk.get("type"), disk.get("device")) == ("disk", "network", "disk")
    assert at(disk, "driver").attrib == {"name": "qemu", "type": "raw", "cache": "writeback",
                                         "discard": "unmap"}
    source = at(disk, "source")
    assert source.get("protocol") == "rbd" and source.get("name") == "vms/vol-7"
    assert [h.attrib for h in source.findall("host")] == [
        {"name": "127.0.0.1", "port": "6789"}, {"name": "::1", "port": "3300"}]
    assert at(disk, "auth").get("username") == "vauban-node"
    assert at(disk, "auth/secret").attrib == {"type": "ceph", "usage": "vauban/ceph/region-1"}
    assert at(disk, "target").attrib == {"dev": "vdc", "bus": "virtio"}
    assert disk.find("readonly") is None


def test_file_disk_renders_as_before() -> None:
    disk = ET.fromstring(DiskConfig(Path("/d/x.qcow2"), "qcow2", "vdc", readonly=True).to_xml())

    assert disk.get("type") == "file"
    assert at(disk, "driver").attrib == {"name": "qemu", "type": "qcow2"}
    assert at(disk, "source").attrib == {"file": "/d/x.qcow2"}
    assert disk.find("auth") is None and disk.find("readonly") is not None


@pytest.mark.parametrize("disk", [
    DiskConfig(Path("/srv/disks/a.qcow2"), "qcow2", "vda"),
    DiskConfig(Path("/srv/disks/seed.raw"), "raw", "vdb", readonly=True),
    DiskConfig(RBD, "raw", "vdc"),
    DiskConfig(RBD, "raw", "vdd", readonly=True),
    DiskConfig(RbdSource("p", "ns/img", (), "u", "s"), "raw", "vde"),  # no monitors listed
], ids=lambda d: d.target)
def test_disk_round_trip(disk: DiskConfig) -> None:
    assert DiskConfig.from_xml(disk.to_xml()) == disk


def test_domain_with_file_and_rbd_disks_round_trips() -> None:
    config = make_config(disks=(DiskConfig(Path("/srv/disks/root.qcow2"), "qcow2", "vda"),
                                DiskConfig(RBD, "raw", "vdb")))

    assert DomainConfig.from_xml(config.to_xml()) == config
    assert parse_disks(config.to_xml()) == config.disks


# An RBD disk as libvirt may return it: <auth> inside <source> (libvirt >= 3.9 form),
# a monitor without a port, an index, an alias and an address added.
LIBVIRT_RBD_DISK = """<domain type='qemu'><devices>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='writeback' discard='unmap'/>
      <source protocol='rbd' name='vms/vol-7' index='3'>
        <host name='10.0.0.5'/>
        <auth username='vauban-node'>
          <secret type='ceph' usage='vauban/ceph/region-1'/>
        </auth>
      </source>
      <target dev='vdc' bus='virtio'/>
      <alias name='virtio-disk2'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x07' function='0x0'/>
    </disk>
    <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>
</devices></domain>"""


def test_parses_rbd_disk_as_libvirt_may_return_it() -> None:
    assert parse_disks(LIBVIRT_RBD_DISK) == (DiskConfig(
        RbdSource("vms", "vol-7", (("10.0.0.5", 6789),), "vauban-node", "vauban/ceph/region-1"),
        "raw", "vdc"),)


@pytest.mark.parametrize("xml, message", [
    ("<disk type='network' device='disk'><driver type='raw'/>"
     "<source protocol='nbd' name='x'/><target dev='vdc'/></disk>", "protocol 'nbd'"),
    ("<disk type='network' device='disk'><driver type='raw'/>"
     "<source protocol='rbd' name='no-pool'/><target dev='vdc'/></disk>", "POOL/IMAGE"),
    ("<disk type='network' device='disk'><driver type='raw'/>"
     "<source protocol='rbd' name='p/i'/><target dev='vdc'/></disk>", "ceph secret"),
    ("<disk type='block' device='disk'><driver type='raw'/>"
     "<source dev='/dev/sdz'/><target dev='vdc'/></disk>", "disk type 'block'"),
])
def test_disks_we_do_not_make_are_rejected(xml: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DiskConfig.from_xml(xml)


def test_disk_element_by_target() -> None:
    xml = make_config(disks=(DiskConfig(Path("/d/r.qcow2"), "qcow2", "vda"),
                             DiskConfig(RBD, "raw", "vdb"))).to_xml()

    found = disk_element_xml(xml, "vdb")
    assert found is not None and DiskConfig.from_xml(found) == DiskConfig(RBD, "raw", "vdb")
    assert disk_element_xml(xml, "vdz") is None
    assert disk_element_xml(LIBVIRT_RBD_DISK, "hdc") is not None  # any kind, CD-ROMs too


def test_driver_maps_rbd_disks_both_ways() -> None:
    spec = DiskSpec(RBD, "raw", "vdc", readonly=True)

    assert disk_config(spec) == DiskConfig(RBD, "raw", "vdc", readonly=True)
    assert disk_spec(disk_config(spec)) == spec
    vm = VmSpec(id=VM_ID, name="db-1", vcpus=1, memory_mib=128,
                disks=(DiskSpec(Path("/d/root.qcow2"), "qcow2", "vda"), spec),
                console_log=Path("/l/c.log"))
    assert LibvirtDriver(accelerated=False).domain_config(vm).disks[1] == disk_config(spec)


# ---------------------------------------------------------------- secrets


def test_ceph_secret_definition_is_ephemeral_private_and_valueless() -> None:
    root = ET.fromstring(secret_xml("vauban/ceph/<region & 1>"))

    assert root.attrib == {"ephemeral": "yes", "private": "yes"}
    assert at(root, "usage").get("type") == "ceph"
    assert root.findtext("usage/name") == "vauban/ceph/<region & 1>"
    assert root.find("value") is None and root.find("uuid") is None


def test_cephx_key_is_decoded_and_never_echoed() -> None:
    key = "AQBzYv1lAAAAABAAq0Ku8S2Pa3w3X1E9kqjIrw=="
    assert decode_key(key) == base64.b64decode(key)

    bad = "AQBzYv1l*secret-part*"
    with pytest.raises(ValueError) as err:
        decode_key(bad)
    assert "secret-part" not in str(err.value) and err.value.__cause__ is None
    with pytest.raises(ValueError, match="empty"):
        decode_key("")


def test_nics_render_as_bridge_interfaces_and_parse_back() -> None:
    from agent.drivers.hypervisor.libvirt.config import NicConfig

    nic = NicConfig(mac="52:54:00:12:34:56", bridge="vbr-0123456789a", mtu=1450,
                    device="vtp-0123456789a")
    el = nic.to_element()
    assert el.get("type") == "bridge"
    assert el.find("source").get("bridge") == "vbr-0123456789a"  # type: ignore[union-attr]
    assert el.find("mtu").get("size") == "1450"  # type: ignore[union-attr]
    assert el.find("model").get("type") == "virtio"  # type: ignore[union-attr]
    assert NicConfig.from_element(el) == nic


def test_gpu_vm_gets_its_group_and_vgpu_as_unmanaged_hostdevs() -> None:
    spec = VmSpec(id=VM_ID, name="train-1", vcpus=8, memory_mib=65536, disks=(),
                  console_log=Path("/srv/logs/train-1.log"),
                  hostdevs=(HostdevSpec("pci", "0000:17:00.0"), HostdevSpec("pci", "0000:17:00.1"),
                            HostdevSpec("mdev", "4b0f5d3a-1c2e-4f6a-8b9c-0d1e2f3a4b5c")))
    config = LibvirtDriver(accelerated=True).domain_config(spec)
    dom = ET.fromstring(config.to_xml())
    hostdevs = dom.findall("devices/hostdev")
    assert [(h.get("type"), h.get("managed"), h.get("mode")) for h in hostdevs] == [
        ("pci", "no", "subsystem"), ("pci", "no", "subsystem"), ("mdev", "no", "subsystem")]
    assert at(hostdevs[0], "source/address").attrib == {
        "domain": "0x0000", "bus": "0x17", "slot": "0x00", "function": "0x0"}
    assert at(hostdevs[1], "source/address").get("function") == "0x1"
    assert hostdevs[2].get("model") == "vfio-pci"
    assert at(hostdevs[2], "source/address").attrib == {
        "uuid": "4b0f5d3a-1c2e-4f6a-8b9c-0d1e2f3a4b5c"}
    assert at(dom, "features/kvm/hidden").get("state") == "on"
    assert DomainConfig.from_xml(config.to_xml()) == config


def test_vm_without_gpus_has_no_hostdev_and_no_hidden_kvm() -> None:
    dom = ET.fromstring(make_config("kvm").to_xml())
    assert dom.find("devices/hostdev") is None and dom.find("features/kvm") is None


def test_the_console_log_is_read_from_a_pty_log_and_from_an_older_file_serial() -> None:
    config = make_config("qemu")
    assert DomainConfig.from_xml(config.to_xml()).console_log == config.console_log
    older = config.to_xml().replace(
        '<serial type="pty"><log file="/srv/logs/web-1.log" append="on" />',
        '<serial type="file"><source path="/srv/logs/older.log" append="on" />')
    assert "older.log" in older
    assert DomainConfig.from_xml(older).console_log == Path("/srv/logs/older.log")


def test_uefi_with_secure_boot_on_q35_asks_libvirt_for_an_enforcing_firmware() -> None:
    root = ET.fromstring(make_config(machine="q35", firmware="efi", secure_boot=True).to_xml())
    assert at(root, "os").get("firmware") == "efi"
    assert at(root, "os/type").get("machine") == "q35"
    assert {f.get("name"): f.get("enabled") for f in root.findall("os/firmware/feature")} == {
        "secure-boot": "yes", "enrolled-keys": "yes"}
    assert at(root, "features/smm").get("state") == "on"
    plain = ET.fromstring(make_config(firmware="efi").to_xml())
    assert {f.get("enabled") for f in plain.findall("os/firmware/feature")} == {"no"}
    assert plain.find("features/smm") is None
    bios = ET.fromstring(make_config().to_xml())
    assert bios.find("os").get("firmware") is None and bios.find("os/firmware") is None  # type: ignore[union-attr]


def test_firmware_is_read_back_as_libvirt_fills_it_in() -> None:
    efi = make_config(machine="q35", firmware="efi", secure_boot=True)
    assert DomainConfig.from_xml(efi.to_xml()) == efi
    # what libvirt returns once it picked the firmware: a pflash loader, secure
    filled = ET.fromstring(make_config().to_xml())
    os_el = at(filled, "os")
    ET.SubElement(os_el, "loader", {"readonly": "yes", "secure": "yes", "type": "pflash"}
                  ).text = "/usr/share/OVMF/OVMF_CODE_4M.ms.fd"
    parsed = DomainConfig.from_xml(ET.tostring(filled, encoding="unicode"))
    assert (parsed.firmware, parsed.secure_boot) == ("efi", True)


def test_scsi_disks_get_a_virtio_scsi_controller_and_every_writable_disk_discards() -> None:
    disks = (DiskConfig(Path("/d/root.qcow2"), "qcow2", "sda", bus="scsi"),
             DiskConfig(Path("/d/seed.raw"), "raw", "sdb", readonly=True, bus="scsi"))
    root = ET.fromstring(make_config(disks=disks).to_xml())
    assert at(root, "devices/controller").attrib == {
        "type": "scsi", "index": "0", "model": "virtio-scsi"}
    found = root.findall("devices/disk")
    assert [(at(d, "target").get("dev"), at(d, "target").get("bus")) for d in found] == [
        ("sda", "scsi"), ("sdb", "scsi")]
    assert [at(d, "driver").get("discard") for d in found] == ["unmap", None]
    assert DomainConfig.from_xml(make_config(disks=disks).to_xml()).disks == disks
    assert ET.fromstring(make_config().to_xml()).find("devices/controller") is None
