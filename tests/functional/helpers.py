"""Drive the controller API as an operator and as agents would, through Flask's test client."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flask.testing import FlaskClient
from werkzeug.serving import make_server
from werkzeug.test import TestResponse

from agent.protocol import (
    MIGRATION_FEATURES,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    Inventory,
    NodeFailure,
    NodeStatus,
    ObservedVm,
    PoolUsage,
    StorageStatus,
)
from controller.api.auth import PEER_CERT_ENVIRON
from controller.app import create_app
from controller.region import Region
from controller.services.totp import code_from_uri


def speaks_agent_protocol(client: FlaskClient) -> FlaskClient:
    """`client`, sending the current agent protocol's header unless a request sets its own
    (as the real agent does on its join and /agent/v1 calls)."""
    client.environ_base["HTTP_" + PROTOCOL_HEADER.upper().replace("-", "_")] = \
        str(PROTOCOL_VERSION)
    return client


def make_csr(name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def inventory(cpus: int = 4, memory_mib: int = 8192, underlay_ip: str | None = None) -> Inventory:
    return Inventory(hostname="h", cpu_model="test cpu", cpu_flags=["vmx"], cpus=cpus,
                     memory_mib=memory_mib, kvm_device=True, kvm_usable=False,
                     kvm_probe_detail="test", disks=[], nics=[], hypervisor="libvirt",
                     storage="localfs", storage_free_bytes=10**12, agent_version="test",
                     underlay_ip=underlay_ip, migration_features=list(MIGRATION_FEATURES))


def storage(pool: str = "localfs", total_bytes: int = 10**12,
            free_bytes: int | None = None) -> StorageStatus:
    """What an agent reports of its storage: one pool of `total_bytes`, `free_bytes` of it free
    (all of it when None). The pool is "localfs" (the node's disk) or the region's Ceph pool."""
    free = total_bytes if free_bytes is None else free_bytes
    return StorageStatus(driver="rbd" if pool != "localfs" else "localfs", health="OK",
                         pools=[PoolUsage(pool=pool, used_bytes=total_bytes - free,
                                          max_avail_bytes=free)])


@dataclass
class FakeNode:
    """A node as the controller sees it: its id and the identity its TLS certificate gives."""

    id: str
    name: str
    peer_cert: dict[str, Any]

    def environ(self) -> dict[str, Any]:
        return {PEER_CERT_ENVIRON: self.peer_cert}


def admin_code(region: Region, at: datetime | None = None) -> str:
    """The admin's one-time code at `at` (default now), from its otpauth URI file."""
    return code_from_uri(region.config.admin_totp_file.read_text(), at or datetime.now(UTC))


# the admin's token per region (data folder, database): a code is accepted once, so a
# second login within the same 30 s would be refused; the helpers log in once and reuse it
_ADMIN_TOKENS: dict[tuple[str, str], str] = {}


def admin_token(client: FlaskClient, region: Region) -> str:
    """A bearer token of the region's admin: logged in (password and code) at the first
    call for the region, the same token afterwards."""
    key = (str(region.config.data_dir), region.config.db_url)
    if key not in _ADMIN_TOKENS:
        password = region.config.admin_password_file.read_text().strip()
        r = client.post("/api/v1/tokens", json={"username": "admin", "password": password,
                                                "totp": admin_code(region)})
        assert r.status_code == 201, r.json
        _ADMIN_TOKENS[key] = r.json["token"]  # type: ignore[index]
    return _ADMIN_TOKENS[key]


class Api:
    def __init__(self, client: FlaskClient, region: Region, token: str | None = None) -> None:
        """Calls with `token`, or as the region's admin (logged in with its password)."""
        self.client = speaks_agent_protocol(client)
        self.region = region
        self.headers = {"Authorization": f"Bearer {token or admin_token(client, region)}"}

    def as_new_user(self, name: str, *roles: tuple[str, str | None]) -> Api:
        """A new user holding `roles` ((role, project or None) each), logged in."""
        password = f"{name}-password-1234"
        r = self.post("/api/v1/users", json={"name": name, "password": password})
        assert r.status_code == 201, r.json
        for role, project in roles:
            r = self.post("/api/v1/role-bindings",
                          json={"user": name, "role": role, "project": project})
            assert r.status_code == 201, r.json
        login: dict[str, Any] = {"username": name, "password": password}
        if any(role == "region-admin" for role, _ in roles):  # a second factor is required
            r = self.post(f"/api/v1/users/{name}/reset", json={"totp": True})
            assert r.status_code == 200, r.json
            made: dict[str, Any] = r.json  # type: ignore[assignment]
            login = {"username": name, "password": made["password"],
                     "totp": code_from_uri(made["provisioning_uri"], datetime.now(UTC))}
        r = self.client.post("/api/v1/tokens", json=login)
        assert r.status_code == 201, r.json
        return Api(self.client, self.region, r.json["token"])  # type: ignore[index]

    def put(self, path: str, **kw: Any) -> TestResponse:
        return self.client.put(path, headers=self.headers, **kw)

    def get(self, path: str, **kw: Any) -> TestResponse:
        return self.client.get(path, headers=self.headers, **kw)

    def post(self, path: str, **kw: Any) -> TestResponse:
        return self.client.post(path, headers=self.headers, **kw)

    def delete(self, path: str) -> TestResponse:
        return self.client.delete(path, headers=self.headers)

    def join_node(self, name: str, cpus: int = 4, memory_mib: int = 8192,
                  report: bool = True, underlay_ip: str | None = None,
                  inv: Inventory | None = None,
                  disk: StorageStatus | None = None) -> FakeNode:
        token = self.post("/api/v1/join-tokens", json={}).json["token"]  # type: ignore[index]
        r = self.client.post("/api/v1/join", json={"token": token, "name": name,
                                                   "csr_pem": make_csr(name)})
        assert r.status_code == 201, r.json
        body: dict[str, Any] = r.json  # type: ignore[assignment]
        cert = x509.load_pem_x509_certificate(body["certificate_pem"].encode())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == body["node_id"]
        node = FakeNode(body["node_id"], name, {
            "subject": ((("commonName", body["node_id"]),),),
            "serialNumber": format(cert.serial_number, "X"),
        })
        if report:
            self.report(node, [], cpus=cpus, memory_mib=memory_mib, underlay_ip=underlay_ip,
                        inv=inv, disk=disk)
        return node

    def report(self, node: FakeNode, vms: list[ObservedVm], applied: int = 0,
               cpus: int = 4, memory_mib: int = 8192,
               underlay_ip: str | None = None, inv: Inventory | None = None,
               disk: StorageStatus | None = None,
               failures: list[NodeFailure] | None = None) -> TestResponse:
        """Post a status report; its storage is `disk`, else a large disk of the region's
        backend (the node's own for localfs, the region's pool for rbd)."""
        config = self.region.config
        status = NodeStatus(applied_generation=applied,
                            inventory=inv or inventory(cpus, memory_mib, underlay_ip),
                            vms=vms, storage=disk or storage(
                                "localfs" if config.storage == "localfs" else config.ceph_pool),
                            failures=failures or [], sent_at=datetime.now(UTC))
        r = self.client.post(f"/agent/v1/nodes/{node.id}/status",
                             data=status.model_dump_json(), content_type="application/json",
                             environ_overrides=node.environ())
        assert r.status_code == 204, r.json
        return r

    def desired(self, node: FakeNode, after: int = -1, wait: float = 0) -> dict[str, Any]:
        r = self.client.get(f"/agent/v1/nodes/{node.id}/desired?after={after}&wait={wait}",
                            environ_overrides=node.environ())
        assert r.status_code == 200, r.json
        return r.json  # type: ignore[return-value]

    def import_image(self, name: str, data: bytes, disk_format: str = "raw",
                     sha256: str | None = None, extra: str = "") -> TestResponse:
        """Upload `data` as image `name`; `extra`: more query parameters ("&a=b")."""
        digest = sha256 or hashlib.sha256(data).hexdigest()
        return self.post(f"/api/v1/images?name={name}&disk_format={disk_format}&sha256={digest}"
                         f"{extra}", data=data, content_type="application/octet-stream")


RAW_IMAGE = b"\0" * (1024 * 1024)  # 1 MiB raw disk: qemu-img reads it as raw


def ceph_files(tmp_path: Path) -> tuple[Path, Path]:
    """A ceph.conf and keyring for a region on rbd; nothing listens there (agents play Ceph)."""
    conf, keyring = tmp_path / "ceph.conf", tmp_path / "vauban.keyring"
    conf.write_text("[global]\nfsid = 1\nmon_host = 127.0.0.1:6789\n")
    keyring.write_text("[client.vauban]\n\tkey = AQBfakefakefakefakefakefakefakefakefake==\n")
    return conf, keyring


@contextmanager
def served_as_node(region: Region, node: FakeNode) -> Iterator[str]:
    """The region's app over plain HTTP on loopback, `node`'s identity set on every request
    as the TLS front end would set it; yields the base URL, stops the server after."""
    app = create_app(region)

    def as_node(environ: dict[str, Any], start_response: Any) -> Any:
        environ.update(node.environ())
        return app(environ, start_response)

    server = make_server("127.0.0.1", 0, as_node, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
