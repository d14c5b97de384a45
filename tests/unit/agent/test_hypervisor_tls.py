"""The hypervisor TLS material under a folder standing for "/": modes and groups as libvirtd
and QEMU (as libvirt-qemu) need them and no wider; what counts as usable; and the
listener enabled once (libvirtd restarted), a renewal loaded without a restart."""

from __future__ import annotations

import grp
import os
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from agent import certs
from agent.hypervisor_tls import (
    HypervisorTls,
    HypervisorTlsError,
    current,
    layout,
    write_material,
)
from agent.protocol import HypervisorCertificateIssued
from controller.pki import RegionCA

NODE = "6f1c1f8e-8a57-4f3e-9d1e-1d7b0a3c2e10"
ADDRESS = "10.242.103.11"
GROUP = grp.getgrgid(os.getgid()).gr_name  # a group this test can give files: its own


@pytest.fixture
def ca(tmp_path: Path) -> RegionCA:
    ca = RegionCA(tmp_path / "ca")
    ca.ensure(["localhost"])
    return ca


class FakeClient:
    """The controller's endpoint, signing with a real region CA."""

    def __init__(self, ca: RegionCA, roles: bool = True) -> None:
        self.ca = ca
        self.roles = roles  # False: a controller older than the roles (no OU)
        self.asked: list[str] = []

    def hypervisor_certificate(self, csr_pem: str, migration_address: str,
                               role: str) -> HypervisorCertificateIssued:
        self.asked.append(migration_address)
        if not self.roles:
            pem = self.ca.sign_node_csr(csr_pem, NODE).pem
            return HypervisorCertificateIssued(certificate_pem=pem.decode(),
                                               expires_at=datetime.now(UTC) + timedelta(1))
        issued = self.ca.sign_hypervisor_csr(csr_pem, NODE, "lab1", migration_address,
                                             role=role)
        return HypervisorCertificateIssued(certificate_pem=issued.pem.decode(),
                                           expires_at=issued.not_after)


class Host:
    """systemctl/virt-admin/virsh as a node answers them; records what was run."""

    def __init__(self) -> None:
        self.ran: list[list[str]] = []
        self.enabled = False

    def __call__(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        args = list(args)
        self.ran.append(args)
        rc = 0
        if args[:2] in (["systemctl", "is-enabled"], ["systemctl", "is-active"]) \
                and "libvirtd-tls.socket" in args:
            rc = 0 if self.enabled else 1
        if args[:2] == ["systemctl", "start"] and "libvirtd-tls.socket" in args:
            self.enabled = True
        return subprocess.CompletedProcess(args, rc, "", "")


def _tls(tmp_path: Path, ca: RegionCA, host: Host | None = None) -> HypervisorTls:
    ca_path = tmp_path / "region-ca.pem"
    ca_path.write_bytes(ca.cert_pem())
    return HypervisorTls(NODE, ca_path, ADDRESS, 0.333, root=tmp_path / "root",
                         qemu_group=GROUP, run=host or Host())


def test_files_have_libvirts_paths_and_only_qemus_keys_are_group_readable(
        tmp_path: Path, ca: RegionCA) -> None:
    tls = _tls(tmp_path, ca)
    cert = tls.renew(FakeClient(ca))  # type: ignore[arg-type]
    root = tmp_path / "root"
    got = {str(f.path.relative_to(root)): (f.path.stat().st_mode & 0o777, f.path.stat().st_gid)
           for f in layout(root, GROUP)}
    gid = grp.getgrnam(GROUP).gr_gid
    assert got == {
        "etc/pki/CA/cacert.pem": (0o644, os.getgid()),
        "etc/pki/libvirt/servercert.pem": (0o644, os.getgid()),
        "etc/pki/libvirt/clientcert.pem": (0o644, os.getgid()),
        "etc/pki/libvirt/private/serverkey.pem": (0o600, os.getgid()),
        "etc/pki/libvirt/private/clientkey.pem": (0o600, os.getgid()),
        "etc/pki/qemu/ca-cert.pem": (0o644, os.getgid()),
        "etc/pki/qemu/server-cert.pem": (0o644, os.getgid()),
        "etc/pki/qemu/client-cert.pem": (0o644, os.getgid()),
        "etc/pki/qemu/server-key.pem": (0o640, gid),
        "etc/pki/qemu/client-key.pem": (0o640, gid),
    }
    assert (root / "etc/pki/libvirt/private").stat().st_mode & 0o777 == 0o700
    assert not list(root.rglob("*.tmp"))
    assert (root / "etc/pki/CA/cacert.pem").read_bytes() == ca.cert_pem()
    assert current(root, ca.cert_pem(), NODE, GROUP) == cert
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == [ADDRESS]


def test_libvirtd_and_qemu_each_have_their_own_key_never_the_agents(
        tmp_path: Path, ca: RegionCA) -> None:
    agent_key, _ = certs.new_request(NODE)
    tls = _tls(tmp_path, ca)
    tls.renew(FakeClient(ca))  # type: ignore[arg-type]
    root = tmp_path / "root/etc/pki"
    written = (root / "qemu/server-key.pem").read_bytes()
    assert written != agent_key
    # QEMU's group reads QEMU's key: it must not be the one other libvirtds admit
    assert written != (root / "libvirt/private/serverkey.pem").read_bytes()
    subjects = {role: x509.load_pem_x509_certificate((root / path).read_bytes())
                .subject.rfc4514_string()
                for role, path in (("libvirt", "libvirt/servercert.pem"),
                                   ("qemu", "qemu/server-cert.pem"))}
    assert subjects == {"libvirt": f"CN={NODE},OU=vauban-libvirt",
                        "qemu": f"CN={NODE},OU=vauban-qemu"}
    (tmp_path / "again").mkdir()
    _tls(tmp_path / "again", ca).renew(FakeClient(ca))  # type: ignore[arg-type]
    assert (tmp_path / "again/root/etc/pki/qemu/server-key.pem").read_bytes() != written


def test_a_wider_leftover_temporary_file_does_not_widen_the_key(
        tmp_path: Path, ca: RegionCA) -> None:
    qemu = tmp_path / "root/etc/pki/qemu"
    qemu.mkdir(parents=True)
    leftover = qemu / "server-key.pem.tmp"
    leftover.write_text("old")
    leftover.chmod(0o666)
    _tls(tmp_path, ca).renew(FakeClient(ca))  # type: ignore[arg-type]
    assert (qemu / "server-key.pem").stat().st_mode & 0o777 == 0o640
    assert not leftover.exists()


def test_missing_mismatched_or_foreign_material_is_not_usable(
        tmp_path: Path, ca: RegionCA) -> None:
    tls = _tls(tmp_path, ca)
    root = tmp_path / "root"
    assert current(root, ca.cert_pem(), NODE, GROUP) is None
    assert tls.due() <= datetime.now(UTC)
    tls.renew(FakeClient(ca))  # type: ignore[arg-type]
    assert tls.due() > datetime.now(UTC) + timedelta(days=30)
    # a crash between two renames: one key file holds another key
    other_key, _ = certs.new_request(NODE)
    (root / "etc/pki/libvirt/private/clientkey.pem").write_bytes(other_key)
    assert current(root, ca.cert_pem(), NODE, GROUP) is None
    tls.renew(FakeClient(ca))  # type: ignore[arg-type]
    # one key for both roles, as written before the roles: renewed
    libvirt = root / "etc/pki/libvirt"
    for name in ("server-key.pem", "client-key.pem"):
        (root / "etc/pki/qemu" / name).write_bytes((libvirt / "private/serverkey.pem")
                                                   .read_bytes())
    for name in ("server-cert.pem", "client-cert.pem"):
        (root / "etc/pki/qemu" / name).write_bytes((libvirt / "servercert.pem").read_bytes())
    assert current(root, ca.cert_pem(), NODE, GROUP) is None
    tls.renew(FakeClient(ca))  # type: ignore[arg-type]
    assert current(root, ca.cert_pem(), NODE, GROUP) is not None
    # a certificate from another CA
    other = RegionCA(tmp_path / "other")
    other.ensure(["localhost"])
    assert current(root, other.cert_pem(), NODE, GROUP) is None


def test_a_certificate_without_the_nodes_address_is_renewed_at_once(
        tmp_path: Path, ca: RegionCA) -> None:
    tls = _tls(tmp_path, ca)
    tls.renew(FakeClient(ca))  # type: ignore[arg-type]
    tls.address = "10.242.103.50"  # the node's underlay address changed
    assert tls.due() <= datetime.now(UTC)


def test_the_listener_is_enabled_once_and_a_renewal_reloads_without_restart(
        tmp_path: Path, ca: RegionCA) -> None:
    host = Host()
    tls = _tls(tmp_path, ca, host)
    client = FakeClient(ca)
    assert not tls.ready()
    next_due = tls.keep(client)  # type: ignore[arg-type]
    assert tls.ready() and next_due > datetime.now(UTC)
    changes = [a for a in host.ran if a[1:2] not in (["is-enabled"], ["is-active"])]
    assert changes == [["systemctl", "enable", "libvirtd-tls.socket"],
                       ["systemctl", "stop", "libvirtd.service"],
                       ["systemctl", "start", "libvirtd-tls.socket", "libvirtd.service"],
                       ["virsh", "-c", f"qemu+tls://{ADDRESS}/system", "uri"]]
    host.ran.clear()
    tls.keep(client)  # type: ignore[arg-type]  # nothing due: no request, no restart
    assert client.asked == [ADDRESS, ADDRESS]  # libvirtd's and QEMU's, once
    assert [a for a in host.ran if a[0] != "systemctl" or a[1] not in ("is-enabled",
                                                                         "is-active")] == [
        ["virsh", "-c", f"qemu+tls://{ADDRESS}/system", "uri"]]
    host.ran.clear()
    tls.address = "10.242.103.50"
    tls.keep(client)  # type: ignore[arg-type]  # renewed: loaded without a restart
    assert ["virt-admin", "server-update-tls", "libvirtd"] in host.ran
    assert ["systemctl", "stop", "libvirtd.service"] not in host.ran


def test_a_libvirtd_that_does_not_answer_over_tls_is_not_ready(
        tmp_path: Path, ca: RegionCA) -> None:
    class Silent(Host):
        def __call__(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
            done = super().__call__(args)
            if list(args)[0] == "virsh":
                return subprocess.CompletedProcess(args, 1, "", "error: unable to connect")
            return done

    host = Silent()
    tls = _tls(tmp_path, ca, host)
    with pytest.raises(Exception, match="does not answer.*unable to connect"):
        tls.keep(FakeClient(ca))  # type: ignore[arg-type]
    assert not tls.ready()
    host.ran.clear()
    with pytest.raises(Exception, match="does not answer"):
        tls.keep(FakeClient(ca))  # type: ignore[arg-type]
    assert ["systemctl", "stop", "libvirtd.service"] in host.ran  # tried again


def test_write_material_refuses_an_unknown_group_before_any_key_is_written(
        tmp_path: Path, ca: RegionCA) -> None:
    with pytest.raises(KeyError):
        write_material(tmp_path / "root", ca.cert_pem(),
                       {"libvirt": (b"cert", b"key"), "qemu": (b"cert", b"key")},
                       "no-such-group-here")
    assert not (tmp_path / "root").exists()


def test_a_command_that_hangs_is_a_failure_of_the_round_not_of_the_thread(
        tmp_path: Path, ca: RegionCA) -> None:
    def hangs(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(list(args), 60)

    tls = _tls(tmp_path, ca)
    tls.run = hangs
    with pytest.raises(HypervisorTlsError, match="systemctl is-enabled.*timed out"):
        tls.keep(FakeClient(ca))  # type: ignore[arg-type]
    assert not tls.ready()


def test_a_node_that_cannot_write_its_material_asks_the_controller_nothing(
        tmp_path: Path, ca: RegionCA) -> None:
    tls = _tls(tmp_path, ca)
    (tmp_path / "root").write_text("not a folder")  # as /etc read-only to the agent
    client = FakeClient(ca)
    with pytest.raises(HypervisorTlsError, match="cannot write the region CA"):
        tls.keep(client)  # type: ignore[arg-type]
    assert client.asked == [] and not tls.ready()


def test_a_controller_that_signs_without_the_role_is_refused_and_nothing_written(
        tmp_path: Path, ca: RegionCA) -> None:
    tls = _tls(tmp_path, ca)
    with pytest.raises(certs.RenewalError, match="OU .none., not vauban-libvirt: upgrade"):
        tls.renew(FakeClient(ca, roles=False))  # type: ignore[arg-type]
    assert not (tmp_path / "root/etc/pki/libvirt/servercert.pem").exists()
