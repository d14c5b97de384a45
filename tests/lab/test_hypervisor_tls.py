"""libvirt TLS between the region's nodes, with material the agents put in place from the
region CA: a node's libvirtd answers another node over `qemu+tls://<address>/system`; a
client certificate from another CA, or one from the region CA that is no node's
libvirtd's (an agent's, a QEMU's, no node's), is refused; QEMU (as libvirt-qemu) reads
its own key and nothing else is widened.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from controller.pki import RegionCA, key_pem, new_key
from tests.e2e.region import wait_for
from tests.lab.region import LabRegion

pytestmark = pytest.mark.e2e

READY_TIMEOUT_S = 300  # the agents ask for certificates and restart libvirtd once
AGENT_KEY = "/var/lib/vauban/agent/node.key"


def _node(region: LabRegion, name: str) -> dict[str, Any]:
    return region.json("node", "show", name)


def _ready(region: LabRegion) -> bool:
    return all(_node(region, n.name)["inventory"].get("migration_ready")
               for n in region.nodes)


@pytest.fixture(scope="module")
def ready(lab_region: LabRegion) -> LabRegion:
    wait_for(lambda: _ready(lab_region), READY_TIMEOUT_S,
             "every node to report its libvirtd ready for TLS migrations", interval=2)
    return lab_region


def _csr(cn: str) -> tuple[bytes, str]:
    key = new_key()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
           .sign(key, hashes.SHA256()))
    return key_pem(key), csr.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture
def client_dirs(ready: LabRegion, tmp_path: Path) -> Iterator[dict[str, str]]:
    """pkipath folders on the first node (cacert.pem = the region CA, so the client trusts
    the server; clientcert/clientkey as named): "node" a region libvirtd certificate for a
    node-like id, "agent" a region agent certificate for one (no OU), "qemu" a region QEMU
    certificate for one (its key is readable by QEMU's group), "foreign" one from another
    CA, "not-a-node" one from the region CA for a subject that is no node's (as the metrics
    scraper's). Removed afterwards."""
    region_ca = RegionCA(ready.layout.controller_dir / "pki")
    other_ca = RegionCA(tmp_path / "other-ca")
    other_ca.ensure(["localhost"])
    base = f"/root/vauban-test-pki-{uuid.uuid4().hex[:8]}"
    host_base = ready.nodes[0].merged / base.lstrip("/")
    made: dict[str, str] = {}
    try:
        for name, ca, cn, role in (("node", region_ca, str(uuid.uuid4()), "libvirt"),
                                   ("agent", region_ca, str(uuid.uuid4()), None),
                                   ("qemu", region_ca, str(uuid.uuid4()), "qemu"),
                                   ("foreign", other_ca, str(uuid.uuid4()), "libvirt"),
                                   ("not-a-node", region_ca, "metrics:test", None)):
            key, csr = _csr(cn)
            folder = host_base / name
            folder.mkdir(parents=True, mode=0o700)
            (folder / "cacert.pem").write_bytes(region_ca.cert_pem())
            cert = ca.sign_node_csr(csr, cn) if role is None else \
                ca.sign_hypervisor_csr(csr, cn, "test", "10.0.0.1", role=role)
            (folder / "clientcert.pem").write_bytes(cert.pem)
            (folder / "clientkey.pem").write_bytes(key)
            (folder / "clientkey.pem").chmod(0o600)
            made[name] = f"{base}/{name}"
        yield made
    finally:
        shutil.rmtree(host_base, ignore_errors=True)


def test_a_node_reaches_anothers_libvirtd_over_tls_with_the_region_certificates(
        ready: LabRegion) -> None:
    a, b = ready.nodes[0], ready.nodes[1]
    status, out = ready.on_node(a.name, f"virsh -c qemu+tls://{b.ip}/system hostname")
    assert status == 0, out
    assert out.strip() == b.name
    # what B serves is its hypervisor certificate from the region CA, naming B
    b_id = _node(ready, b.name)["id"]
    served = x509.load_pem_x509_certificate(
        (b.merged / "etc/pki/libvirt/servercert.pem").read_bytes())
    served.verify_directly_issued_by(
        x509.load_pem_x509_certificate(ready.layout.ca_file.read_bytes()))
    assert served.subject.rfc4514_string() == f"CN={b_id},OU=vauban-libvirt"
    san = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [b.ip]
    assert san.get_values_for_type(x509.DNSName) == [b_id, b.name]
    agent_key = (b.merged / AGENT_KEY.lstrip("/")).read_bytes()
    qemu_key = (b.merged / "etc/pki/qemu/server-key.pem").read_bytes()
    assert qemu_key != agent_key
    assert qemu_key != (b.merged / "etc/pki/libvirt/private/serverkey.pem").read_bytes()


def test_only_libvirtd_certificates_of_the_region_ca_are_admitted(
        ready: LabRegion, client_dirs: dict[str, str]) -> None:
    a, b = ready.nodes[0], ready.nodes[1]

    def connect(which: str) -> tuple[int, str]:
        return ready.on_node(
            a.name, f"virsh -c 'qemu+tls://{b.ip}/system?pkipath={client_dirs[which]}' uri")

    status, out = connect("node")  # the same way, with a certificate that fits
    assert status == 0, out
    for refused in ("agent", "qemu", "foreign", "not-a-node"):
        status, out = connect(refused)
        assert status != 0, f"{refused}: {out}"


def test_qemu_reads_its_key_and_nothing_else_is_widened(ready: LabRegion) -> None:
    for node in ready.nodes:
        def reads(user: str, path: str, on: str = node.name) -> bool:
            status, out = ready.on_node(on, f"runuser -u {user} -- cat {path}")
            assert status == 0 or "Permission denied" in out, out  # no other failure
            return status == 0

        assert reads("libvirt-qemu", "/etc/pki/qemu/server-key.pem")
        assert reads("libvirt-qemu", "/etc/pki/qemu/client-key.pem")
        assert not reads("nobody", "/etc/pki/qemu/server-key.pem")
        assert not reads("libvirt-qemu", "/etc/pki/libvirt/private/serverkey.pem")
        assert not reads("libvirt-qemu", AGENT_KEY)
        status, out = ready.on_node(node.name, "grep -E '^migrate_tls_x509_verify' "
                                    "/etc/libvirt/qemu.conf")
        assert status == 0 and out.strip() == "migrate_tls_x509_verify = 1", out
