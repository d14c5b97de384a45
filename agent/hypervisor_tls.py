"""The node's hypervisor TLS material: libvirtd's and QEMU's certificates from the region CA.

Live migration runs between two nodes' libvirtds (`qemu+tls://<address>/system`) and
between their QEMUs (the migration stream), both over TLS with certificates the region CA
signed for the node (CN its id; SAN its id, its name, its migration address; client and
server). Each has a key of its own, never the agent's mTLS key: libvirtd's (OU
vauban-libvirt, root's alone; other nodes' libvirtds admit only this OU) and QEMU's (OU
vauban-qemu): QEMU runs as `libvirt-qemu` and opens its files itself, so its key is
readable by the `kvm` group, and must open no libvirtd.

Files (libvirt's and QEMU's default paths, under `root`):

    etc/pki/CA/cacert.pem                              region CA        0644 root:root
    etc/pki/libvirt/{servercert,clientcert}.pem        libvirtd's cert  0644 root:root
    etc/pki/libvirt/private/{serverkey,clientkey}.pem  libvirtd's key   0600 root:root
    etc/pki/qemu/ca-cert.pem                           region CA        0644 root:root
    etc/pki/qemu/{server-cert,client-cert}.pem         QEMU's cert      0644 root:root
    etc/pki/qemu/{server-key,client-key}.pem           QEMU's key       0640 root:kvm

Each file is replaced in one step (written beside it, synced, renamed). A crash between
two renames can leave a key beside a certificate for another key: `current` then finds no
usable material and the agent asks for a new certificate at once.

Once the files are in place, libvirtd's TLS listener is enabled once (Debian's
`libvirtd-tls.socket`, port 16514; libvirtd refuses to start with it and no certificate):
libvirtd is stopped, then the socket and libvirtd started (systemd starts no socket whose
service runs; running VMs survive, libvirtd.service has KillMode=process); a renewed
certificate is loaded into the running libvirtd with `virt-admin server-update-tls`.
"""

from __future__ import annotations

import grp
import ipaddress
import logging
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from agent import certs
from agent.client import ControllerClient

log = logging.getLogger(__name__)

TLS_PORT = 16514  # libvirtd's TLS port (libvirtd-tls.socket)
TLS_SOCKET = "libvirtd-tls.socket"
LIBVIRTD = "libvirtd.service"
QEMU_GROUP = "kvm"  # libvirt-qemu's group on Debian: QEMU reads its key through it
PROBE_TIMEOUT_S = 60.0


class HypervisorTlsError(Exception):
    """The material could not be renewed or the listener not enabled; what is on disk is
    either the previous complete set or no usable set (renewed again at once)."""


ROLES = ("libvirt", "qemu")  # whose key: libvirtd's, QEMU's (controller.pki)


@dataclass(frozen=True)
class PkiFile:
    path: Path
    what: str  # "ca", "cert" or "key"
    mode: int
    group: str | None  # None: root's group
    role: str  # whose files: "libvirt" or "qemu"


Material = dict[str, tuple[bytes, bytes]]  # role: (certificate PEM, key PEM)


def layout(root: Path, qemu_group: str = QEMU_GROUP) -> list[PkiFile]:
    """Every file written under `root`, with what it holds, its mode, group and role."""
    pki = root / "etc/pki"
    return [
        PkiFile(pki / "CA/cacert.pem", "ca", 0o644, None, "libvirt"),
        PkiFile(pki / "libvirt/servercert.pem", "cert", 0o644, None, "libvirt"),
        PkiFile(pki / "libvirt/clientcert.pem", "cert", 0o644, None, "libvirt"),
        PkiFile(pki / "libvirt/private/serverkey.pem", "key", 0o600, None, "libvirt"),
        PkiFile(pki / "libvirt/private/clientkey.pem", "key", 0o600, None, "libvirt"),
        PkiFile(pki / "qemu/ca-cert.pem", "ca", 0o644, None, "qemu"),
        PkiFile(pki / "qemu/server-cert.pem", "cert", 0o644, None, "qemu"),
        PkiFile(pki / "qemu/client-cert.pem", "cert", 0o644, None, "qemu"),
        PkiFile(pki / "qemu/server-key.pem", "key", 0o640, qemu_group, "qemu"),
        PkiFile(pki / "qemu/client-key.pem", "key", 0o640, qemu_group, "qemu"),
    ]


# directories made when missing: libvirt's private one is root's alone
_DIRS = (("etc/pki", 0o755), ("etc/pki/CA", 0o755), ("etc/pki/libvirt", 0o755),
         ("etc/pki/libvirt/private", 0o700), ("etc/pki/qemu", 0o755))


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(path: Path, data: bytes, mode: int, gid: int) -> None:
    """`path` now holds `data` with `mode` and group `gid` (never more open on the way)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # a leftover could carry a wider mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchown(f.fileno(), -1, gid)
            os.fchmod(f.fileno(), mode)  # the group bit only once the group is right
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _make_dirs(root: Path) -> None:
    for sub, mode in _DIRS:
        d = root / sub
        if not d.is_dir():
            d.mkdir(mode=mode, parents=True, exist_ok=True)


def write_ca(root: Path, ca_pem: bytes) -> None:
    """The folders made and the CA files of `layout(root)` written. OSError on failure."""
    _make_dirs(root)
    for f in layout(root):
        if f.what == "ca":
            _replace(f.path, ca_pem, f.mode, os.getgid())


def write_material(root: Path, ca_pem: bytes, material: Material,
                   qemu_group: str = QEMU_GROUP) -> None:
    """Write the CA, and each role's certificate and key of `material`, to every file of
    `layout(root)`. KeyError for a group that does not exist or a role missing from
    `material` (nothing written); OSError on failure while writing (some files may be
    new, some old: `current` then finds no usable set)."""
    files = [(f, grp.getgrnam(f.group).gr_gid if f.group else os.getgid(),
              {"ca": ca_pem, "cert": material[f.role][0], "key": material[f.role][1]}[f.what])
             for f in layout(root, qemu_group)]  # an unknown group or role: nothing written
    _make_dirs(root)
    # certificates before keys: libvirtd and QEMU read a pair only when asked to
    for f, gid, data in sorted(files, key=lambda fgd: fgd[0].what == "key"):
        _replace(f.path, data, f.mode, gid)
    for d in {f.path.parent for f in layout(root, qemu_group)}:
        _sync_dir(d)


def _spki(key: object) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _usable(cert_pem: bytes, key_pem: bytes, ca_pem: bytes, node_id: str,
            role: str) -> x509.Certificate | None:
    """The certificate when it is this node's for `role`, issued by the CA, valid now and
    of this key; else None."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    except (ValueError, TypeError, InvalidSignature):
        return None
    subject = cert.subject
    cns = [a.value for a in subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    ous = [a.value for a in subject.get_attributes_for_oid(
        x509.NameOID.ORGANIZATIONAL_UNIT_NAME)]
    now = datetime.now(UTC)
    if _spki(cert.public_key()) != _spki(key.public_key()) or cns != [node_id] \
            or ous != [f"vauban-{role}"] \
            or not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        return None
    return cert


def current(root: Path, ca_pem: bytes, node_id: str,
            qemu_group: str = QEMU_GROUP) -> x509.Certificate | None:
    """libvirtd's certificate in place when every file exists, every CA file is the region
    CA, and each role's files hold one certificate and one key that belong together, the
    certificate this node's for that role, issued by that CA and valid now, and the two
    roles' keys differ; else None (the material must be written again)."""
    try:
        files = {f.path: f.path.read_bytes() for f in layout(root, qemu_group)}
    except OSError:
        return None
    found: dict[str, x509.Certificate] = {}
    keys: set[bytes] = set()
    for role in ROLES:
        by_kind: dict[str, set[bytes]] = {}
        for f in layout(root, qemu_group):
            if f.role == role:
                by_kind.setdefault(f.what, set()).add(files[f.path])
        if by_kind["ca"] != {ca_pem} or len(by_kind["cert"]) != 1 or \
                len(by_kind["key"]) != 1:
            return None
        key_pem = next(iter(by_kind["key"]))
        cert = _usable(next(iter(by_kind["cert"])), key_pem, ca_pem, node_id, role)
        if cert is None:
            return None
        found[role] = cert
        keys.add(key_pem)
    if len(keys) != len(ROLES):  # one key for both: QEMU's group could read libvirtd's
        return None
    return found["libvirt"]


def names_address(cert: x509.Certificate, address: str) -> bool:
    """Whether `cert` carries `address` as an IP SAN (what migration URIs name)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return ipaddress.ip_address(address) in san.get_values_for_type(x509.IPAddress)


Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


def run_command(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run a host command; its output is kept for the error message."""
    return subprocess.run(list(args), capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                          check=False)


class HypervisorTls:
    """Keeps the node's hypervisor TLS material current and libvirtd's TLS listener on.

    `root` is "/" on a node; tests give a folder. `run` runs host commands (systemctl,
    virt-admin, virsh)."""

    def __init__(self, node_id: str, ca_path: Path, address: str | None,
                 renew_fraction: float, root: Path = Path("/"),
                 qemu_group: str = QEMU_GROUP, run: Runner = run_command) -> None:
        self.node_id = node_id
        self.ca_path = ca_path
        self.address = address
        self.renew_fraction = renew_fraction
        self.root = root
        self.qemu_group = qemu_group
        self.run = run
        self._ready = False
        self._restart = False  # the last probe failed: restart libvirtd on the next round
        self.detail = "no hypervisor certificate yet"

    def ready(self) -> bool:
        """Whether the material is in place and libvirtd answered over TLS with it (as last
        checked by `keep`)."""
        return self._ready

    def certificate(self) -> x509.Certificate | None:
        return current(self.root, self.ca_path.read_bytes(), self.node_id, self.qemu_group)

    def due(self) -> datetime:
        """When the material must be renewed: now when there is none that is usable or it
        does not name the node's address; else once its renewal fraction is reached."""
        cert = self.certificate()
        if cert is None or self.address is None or not names_address(cert, self.address):
            return datetime.now(UTC)
        return certs.renewal_due(cert, self.renew_fraction)

    def renew(self, client: ControllerClient) -> x509.Certificate:
        """New keys (libvirtd's, QEMU's) and the controller's certificates for them, written
        to every file; returns libvirtd's. Raises what the client raises,
        certs.RenewalError for an answer that is not this node's certificate (nothing
        written), HypervisorTlsError if writing failed."""
        if self.address is None:
            raise HypervisorTlsError("this node has no underlay address towards the "
                                     "controller: other nodes could not reach it to migrate")
        ca_pem = self.ca_path.read_bytes()
        try:  # first what is public, so a node that cannot write asks the controller nothing
            write_ca(self.root, ca_pem)
        except OSError as e:
            raise HypervisorTlsError(f"cannot write the region CA under "
                                     f"{self.root / 'etc/pki'}: {e}") from e
        material: Material = {}
        certificates: dict[str, x509.Certificate] = {}
        for role in ROLES:  # a key of its own each: QEMU's group reads QEMU's alone
            key_pem, csr_pem = certs.new_request(self.node_id)
            issued = client.hypervisor_certificate(csr_pem, self.address, role)
            cert = certs.check_issued(issued.certificate_pem, key_pem, self.node_id, ca_pem)
            ous = [a.value for a in cert.subject.get_attributes_for_oid(
                x509.NameOID.ORGANIZATIONAL_UNIT_NAME)]
            if ous != [f"vauban-{role}"]:  # a controller older than the roles
                raise certs.RenewalError(f"the controller's {role} certificate has OU "
                                         f"{ous or '(none)'}, not vauban-{role}: upgrade "
                                         "the controller")
            certificates[role] = cert
            material[role] = (issued.certificate_pem.encode(), key_pem)
        try:
            write_material(self.root, ca_pem, material, self.qemu_group)
        except (OSError, KeyError) as e:
            raise HypervisorTlsError(f"writing the hypervisor certificates under "
                                     f"{self.root / 'etc/pki'} failed: {e}") from e
        return certificates["libvirt"]

    def _run(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """The command's result; HypervisorTlsError when it cannot run or hangs."""
        try:
            return self.run(args)
        except (OSError, subprocess.SubprocessError) as e:
            raise HypervisorTlsError(f"{' '.join(args)}: {e}") from e

    def _systemctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run(["systemctl", *args])

    def _must(self, args: Sequence[str]) -> None:
        done = self._run(args)
        if done.returncode != 0:
            raise HypervisorTlsError(f"{' '.join(args)} failed ({done.returncode}): "
                                     f"{(done.stderr or done.stdout).strip()[:400]}")

    def enable_listener(self, renewed: bool) -> None:
        """libvirtd's TLS listener on with the material in place: enabled (and libvirtd
        restarted to take the socket) the first time, the renewed certificate loaded into
        the running libvirtd afterwards. HypervisorTlsError on failure."""
        enabled = self._systemctl("is-enabled", "--quiet", TLS_SOCKET).returncode == 0
        active = self._systemctl("is-active", "--quiet", TLS_SOCKET).returncode == 0
        if not enabled:
            self._must(["systemctl", "enable", TLS_SOCKET])
        if not active or self._restart:
            # systemd refuses to start a socket whose service runs, and libvirtd takes its
            # sockets only when it starts: stop it (its VMs run on: KillMode=process), then
            # start both; a libvirtd started in between by a client fails this round only
            self._must(["systemctl", "stop", LIBVIRTD])
            self._must(["systemctl", "start", TLS_SOCKET, LIBVIRTD])
            self._restart = False
            log.info("enabled libvirtd's TLS listener (%s, port %d) and restarted libvirtd",
                     TLS_SOCKET, TLS_PORT)
        elif renewed and self._systemctl("is-active", "--quiet", LIBVIRTD).returncode == 0:
            self._must(["virt-admin", "server-update-tls", "libvirtd"])

    def probe(self) -> tuple[bool, str]:
        """Whether this node's libvirtd answers `qemu+tls://<address>/system` with the
        material in place (the check a peer's migration makes), and what was seen."""
        if self.address is None:
            return False, "no migration address"
        host = f"[{self.address}]" if ":" in self.address else self.address
        uri = f"qemu+tls://{host}/system"
        try:
            done = self._run(["virsh", "-c", uri, "uri"])
        except HypervisorTlsError as e:  # a hung handshake ends with the command's timeout
            return False, str(e)
        if done.returncode != 0:
            return False, f"{uri}: {(done.stderr or done.stdout).strip()[:400]}"
        return True, f"libvirtd answers {uri}"

    def keep(self, client: ControllerClient) -> datetime:
        """One round: renew when due, enable the listener, check that libvirtd answers over
        TLS. Returns when to look again. Raises what `renew`/`enable_listener` raise (then
        `ready()` is False, the previous material stays in use)."""
        renewed = False
        try:
            if self.due() <= datetime.now(UTC):
                cert = self.renew(client)
                renewed = True
                log.info("hypervisor certificate: serial %x, valid until %s",
                         cert.serial_number, cert.not_valid_after_utc.isoformat())
            self.enable_listener(renewed)
        except BaseException as e:
            self._ready, self.detail = False, str(e)
            raise
        self._ready, self.detail = self.probe()
        if not self._ready:
            self._restart = True  # a restart that failed, or a socket libvirtd never took
            raise HypervisorTlsError(f"libvirtd's TLS listener does not answer: {self.detail}")
        return self.due()

