"""XCP-ng pools as nodes: read a pool over pinned XAPI, enroll it, hand its agent the way in.

A pool is enrolled from its master's URL and the SHA-256 of the certificate that master
presents (the operator reads it on the host's console: XCP-ng ships self-signed
certificates). Over that pinned channel the controller logs in, reads the pool and its
hosts, and fetches every member's certificate (`host.get_server_certificate`): those are
shown to the operator, who confirms them; the confirmed set is pinned. Nothing is kept
when any step fails. The password is sealed with the region key for the pool's node
alone, never logged nor audited, and handed only to that node's agent, over mutual TLS.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.drivers.xapi.errors import (
    CertificateInvalid,
    CertificateMismatch,
    MasterRefused,
    PoolUnreachable,
    XapiError,
)
from agent.drivers.xapi.pool import PoolClient
from agent.drivers.xapi.transport import fingerprint_of, format_fingerprint, normalize_fingerprint
from controller.db.models import JoinToken, Node, XapiPool
from controller.errors import Conflict, InvalidInput, NotFound, Unreachable, WrongAgent
from controller.secretbox import RegionKey
from controller.services import audit
from controller.services.nodes import create_join_token, revoke_join_token

PROBE_TIMEOUT = 15.0  # seconds a probe waits on a host: an operator waits on the answer
JOIN_TOKEN_TTL = timedelta(hours=24)
TEXT_MAX = 255  # the url and pool_name columns of xapi_pools


def shown(sha256: str) -> str:
    """A pinned fingerprint as operators compare them (AA:BB:…)."""
    return format_fingerprint(sha256)


def password_purpose(node_id: str) -> str:
    """The sealing purpose of a pool's password: it opens for this node alone."""
    return f"xapi-password/{node_id}"


@dataclass(frozen=True)
class Member:
    """One host of a pool as read over the pinned channel."""

    host_uuid: str
    name: str
    address: str
    sha256: str  # lower-case hex
    master: bool
    certificate: str  # PEM, as the pool records it: the agent's trust anchor for the host

    def stored(self) -> dict[str, Any]:
        return {"host_uuid": self.host_uuid, "name": self.name, "address": self.address,
                "sha256": self.sha256, "certificate": self.certificate}


@dataclass(frozen=True)
class Repository:
    """A storage repository of the pool that can hold VM disks."""

    uuid: str
    name: str
    type: str
    default: bool


@dataclass(frozen=True)
class Probed:
    """A pool as its master showed it: what enrollment pins, and where disks may go."""

    url: str
    pool_uuid: str
    pool_name: str
    members: list[Member]
    repositories: list[Repository]
    templates: list[str]  # the names of its VM templates

    def template(self, name: str | None) -> str | None:
        """`name` if the pool has one VM template of that name (None: the default);
        InvalidInput naming a few it has otherwise."""
        if name is None or self.templates.count(name) == 1:
            return name
        some = ", ".join(sorted(set(self.templates))[:20]) or "none"
        why = "no" if name not in self.templates else "several"
        raise InvalidInput(f"pool {self.pool_name} has {why} VM templates named {name!r}; "
                           f"some it has: {some}", field="template")

    def repository(self, ref: str | None) -> Repository:
        """The SR named `ref` (uuid or name), else the default; InvalidInput otherwise."""
        found = [r for r in self.repositories
                 if (r.default if ref is None else ref in (r.uuid, r.name))]
        if len(found) == 1:
            return found[0]
        names = ", ".join(f"{r.name} ({r.uuid})" for r in self.repositories) or "none"
        why = "has no default storage repository" if ref is None else (
            f"has {'no' if not found else 'several'} storage repositories named {ref!r}")
        raise InvalidInput(f"pool {self.pool_name} {why}; its repositories for VM disks: "
                           f"{names}", field="sr")


def _url(text: str) -> tuple[str, str, int]:
    """(normalized URL, host, port) of https://HOST[:PORT][/]; InvalidInput otherwise."""
    try:
        parsed = urllib.parse.urlsplit(text.strip())
        port = parsed.port or 443
    except ValueError as e:
        raise InvalidInput(f"{text!r} is not a URL: {e}", field="url") from e
    if parsed.scheme != "https" or not parsed.hostname or parsed.path not in ("", "/") \
            or parsed.query or parsed.fragment or parsed.username or parsed.password:
        raise InvalidInput(f"{text!r}: a pool master is reached as https://HOST[:PORT] "
                           "(no path, query or credentials in the URL)", field="url")
    host = parsed.hostname
    shown = f"[{host}]" if ":" in host else host
    url = f"https://{shown}:{port}"
    if len(url) > TEXT_MAX:  # what the pool's row holds (with the port written out)
        raise InvalidInput(f"the URL is longer than {TEXT_MAX} characters with its port "
                           "written out", field="url")
    return url, host, port


def _der_fingerprint(pem: str, host: str) -> str:
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError as e:
        raise InvalidInput(f"host {host}: the pool gave no readable certificate for it "
                           f"({e})") from e
    return fingerprint_of(cert.public_bytes(Encoding.DER))


def probe(url: str, username: str, password: str, fingerprint: str,
          timeout: float = PROBE_TIMEOUT) -> Probed:
    """Log in to the pool master at `url` pinned to `fingerprint`, read the pool, its
    hosts and each host's certificate, log out. Changes nothing anywhere.

    InvalidInput: bad URL or fingerprint, another certificate presented (both SHA-256
    named), credentials refused, a member named instead of the master (its address
    named); Unreachable: the host cannot be reached.
    """
    normal, host, port = _url(url)
    try:
        pin = normalize_fingerprint(fingerprint)
    except ValueError as e:
        raise InvalidInput(str(e), field="fingerprint") from e
    client = PoolClient(normal, username, password, {host: pin}, timeout=timeout, label=host)
    try:
        client.connect()
        return _read_pool(client, normal, host)
    except CertificateInvalid as e:
        raise InvalidInput(str(e), field="fingerprint") from e
    except CertificateMismatch as e:
        raise InvalidInput(
            f"host {host} presented a certificate with SHA-256 {e.presented}, not the "
            f"expected {format_fingerprint(pin)}: refused, nothing was sent",
            field="fingerprint") from e
    except MasterRefused as e:
        raise InvalidInput(_not_master(str(e), e.params, host, port)) from e
    except PoolUnreachable as e:
        raise Unreachable(f"the pool master at {normal} cannot be reached: {e}") from e
    except XapiError as e:
        if e.code == "SESSION_AUTHENTICATION_FAILED":
            raise InvalidInput(f"the pool at {normal} refused the credentials of "
                               f"{username!r}", field="password") from e
        raise InvalidInput(f"the pool at {normal} answered: {e}") from e
    finally:
        client.close()


def _not_master(message: str, params: list[str], host: str, port: int) -> str:
    """MasterRefused in an operator's words, naming the master (`params`: HOST_IS_SLAVE's,
    the master's address first). Its certificate is not read here: a fingerprint shown
    without anything vouching for it would be copied on trust; the master's console says
    it."""
    master = params[0] if params else ""
    if not master:
        return message
    return (f"host {host} is a member, not the pool master; the master is {master}: read "
            f"its certificate's SHA-256 on the master's console, then enroll with "
            f"https://{master}:{port} and that fingerprint")


def _read_pool(client: PoolClient, url: str, host: str) -> Probed:
    pools = client.call("pool.get_all_records")
    if len(pools) != 1:
        raise InvalidInput(f"the host at {url} shows {len(pools)} pools, not one")
    pool = next(iter(pools.values()))
    hosts = client.call("host.get_all_records")
    members: list[Member] = []
    for ref, rec in sorted(hosts.items(), key=lambda item: str(item[1].get("address"))):
        address = str(rec.get("address", ""))
        pem = str(client.call("host.get_server_certificate", ref))
        members.append(Member(host_uuid=str(rec["uuid"]), name=str(rec.get("name_label", "")),
                              address=address, sha256=_der_fingerprint(pem, address),
                              master=ref == pool.get("master"), certificate=pem))
    master = next((m for m in members if m.master), None)
    if master is None or master.address != client.address:
        raise InvalidInput(f"the pool at {url} names no master at the address in use")
    if master.sha256 != client.pins[client.address]:
        raise InvalidInput(f"host {host}: the pool's record of its certificate "
                           f"({format_fingerprint(master.sha256)}) is not the one it presents")
    default = pool.get("default_SR")
    repositories = [Repository(uuid=str(rec["uuid"]), name=str(rec.get("name_label", "")),
                               type=str(rec.get("type", "")), default=ref == default)
                    for ref, rec in sorted(client.call("SR.get_all_records").items(),
                                           key=lambda item: str(item[1].get("name_label")))
                    if rec.get("content_type") not in ("iso", "udev")]  # holds no VM disk
    name = str(pool.get("name_label"))
    if len(name) > TEXT_MAX:
        raise InvalidInput(f"the pool's name is longer than {TEXT_MAX} characters: give it "
                           "a shorter one in the pool first")
    templates = [str(rec.get("name_label", "")) for rec in
                 client.call("VM.get_all_records").values() if rec.get("is_a_template")]
    return Probed(url=url, pool_uuid=str(pool["uuid"]), pool_name=name,
                  members=members, repositories=repositories, templates=templates)


def _check_confirmed(probed: Probed, confirmed: dict[str, str]) -> None:
    """Conflict unless `confirmed` (host uuid -> SHA-256) is exactly what the pool shows."""
    shown = {m.host_uuid: m.sha256 for m in probed.members}
    try:
        wanted = {h: normalize_fingerprint(fp) for h, fp in confirmed.items()}
    except ValueError as e:
        raise InvalidInput(str(e), field="members") from e
    if wanted != shown:
        differ = sorted(set(wanted.items()) ^ set(shown.items()))
        hosts = sorted({h for h, _ in differ})
        raise Conflict("the pool's members or their certificates are not the ones confirmed "
                       f"(hosts {', '.join(hosts)}): probe again and confirm what it shows",
                       shown={h: format_fingerprint(fp) for h, fp in shown.items()})


def enroll(db: Session, actor: str, box: RegionKey, probed: Probed, *, name: str,
           username: str, password: str, confirmed: dict[str, str],
           sr: str | None = None, template: str | None = None) -> tuple[Node, str]:
    """Add the probed pool as node `name`, its members pinned as confirmed, its disks on
    SR `sr` (uuid or name; None: the pool's default SR), its VMs cloned from VM template
    `template` (None: "Other install media"): (the node, its agent's one-time join
    token). All in the caller's transaction: on any refusal nothing is added.
    Conflict: members not as confirmed, pool or name already there; InvalidInput: no
    such SR or template."""
    _check_confirmed(probed, confirmed)
    repository = probed.repository(sr)
    probed.template(template)
    taken = db.scalar(select(XapiPool).where(XapiPool.pool_uuid == probed.pool_uuid))
    if taken is not None:
        owner = db.get(Node, taken.node_id)
        raise Conflict(f"pool {probed.pool_uuid} is already enrolled as node "
                       f"{owner.name if owner else taken.node_id}")
    if db.scalar(select(Node).where(Node.name == name)) is not None:
        raise Conflict(f"a node named '{name}' is already in the region", field="name")
    node = Node(name=name, cert_serial="", inventory={"hypervisor": "xapi"})
    db.add(node)
    db.flush()
    db.add(XapiPool(node_id=node.id, url=probed.url, username=username,
                    password_sealed=box.seal(password_purpose(node.id), password.encode()),
                    pool_uuid=probed.pool_uuid, pool_name=probed.pool_name,
                    members=[m.stored() for m in probed.members],
                    sr_uuid=None if sr is None else repository.uuid, template=template))
    secret, token = create_join_token(db, actor, f"agent of XCP-ng pool {name}",
                                      int(JOIN_TOKEN_TTL.total_seconds()))
    token.node_id = node.id
    audit.record(db, actor, "node.add-xcpng", f"node/{node.id}", name=name, url=probed.url,
                 username=username, pool_uuid=probed.pool_uuid, sr=repository.uuid,
                 template=template,
                 members={m.host_uuid: format_fingerprint(m.sha256) for m in probed.members})
    return node, secret


def new_join_token(db: Session, actor: str, node: Node) -> str:
    """A new one-time token (valid 24 h, returned once) for an agent to join pool node
    `node` again, e.g. on a rebuilt host: its certificate then replaces the node's.
    Unused tokens issued for the node before are revoked. NotFound for a node that is
    no pool; audited (without the secret)."""
    pool_of(db, node)
    earlier = db.scalars(select(JoinToken).where(
        JoinToken.node_id == node.id, JoinToken.used_at.is_(None),
        JoinToken.revoked_at.is_(None)))
    for old in earlier:
        revoke_join_token(db, actor, old.id)
    secret, token = create_join_token(db, actor, f"agent of XCP-ng pool {node.name}",
                                      int(JOIN_TOKEN_TTL.total_seconds()))
    token.node_id = node.id
    audit.record(db, actor, "node.xcpng-token", f"node/{node.id}", name=node.name,
                 join_token=token.id)
    return secret


def record_new_pin_probe(db: Session, actor: str, node: Node, fingerprint: str,
                         pinned: str) -> None:
    """Audit a probe of an enrolled pool's master under a fingerprint other than its pin:
    the stored password is sent to the host that presents it, on the caller's word."""
    try:
        given = normalize_fingerprint(fingerprint)
    except ValueError as e:
        raise InvalidInput(str(e), field="fingerprint") from e
    if given != pinned:
        audit.record(db, actor, "node.xcpng-probe", f"node/{node.id}", name=node.name,
                     pinned=format_fingerprint(pinned), trusted=format_fingerprint(given))


def pool_of(db: Session, node: Node) -> XapiPool:
    pool = db.get(XapiPool, node.id)
    if pool is None:
        raise NotFound(f"node {node.name} is not an XCP-ng pool")
    return pool


def refuse_kvm_agent(db: Session, node_id: str) -> None:
    """WrongAgent when the node is an XCP-ng pool: a KVM agent there would take the pool's
    VMs onto its own host, unfiltered (nothing else is checked)."""
    if db.get(XapiPool, node_id) is not None:
        raise WrongAgent("this node is an XCP-ng pool: its agent runs with "
                         "hypervisor = \"xapi\" (vauban-agent@<pool>), not a KVM hypervisor")


def agent_settings(db: Session, box: RegionKey, node_id: str) -> dict[str, Any]:
    """What the pool's agent needs to reach it (the password opened): url, username,
    password, pool_uuid, pins (address -> SHA-256), certificates (address -> PEM, where
    kept: pools enrolled before they were have none). WrongAgent for a node that is no
    pool."""
    pool = db.get(XapiPool, node_id)
    if pool is None:
        raise WrongAgent("this node is not an XCP-ng pool: its agent runs with a KVM "
                         "hypervisor, not hypervisor = \"xapi\"")
    return {"url": pool.url, "username": pool.username,
            "password": box.open(password_purpose(node_id), pool.password_sealed).decode(),
            "pool_uuid": pool.pool_uuid, "sr_uuid": pool.sr_uuid, "template": pool.template,
            "pins": {m["address"]: m["sha256"] for m in pool.members},
            "certificates": {m["address"]: m["certificate"] for m in pool.members
                             if m.get("certificate")}}



def _stored_pin(pool: XapiPool) -> str:
    host = _url(pool.url)[1]
    return next((m["sha256"] for m in pool.members if m["address"] == host), "")


def credentials(db: Session, box: RegionKey, node: Node) -> tuple[str, str, str, str]:
    """(url, username, password, the pin of the URL's host) of an enrolled pool;
    NotFound for a node that is no pool."""
    pool = pool_of(db, node)
    password = box.open(password_purpose(node.id), pool.password_sealed).decode()
    return pool.url, pool.username, password, _stored_pin(pool)


def repin(db: Session, actor: str, node: Node, probed: Probed,
          confirmed: dict[str, str]) -> XapiPool:
    """Pin the members' certificates as the pool shows them now and the operator
    confirmed (after a planned certificate change). Conflict, nothing changed: another
    pool answered, or members not as confirmed. Audited with each change (old -> new)."""
    pool = pool_of(db, node)
    if probed.pool_uuid != pool.pool_uuid:
        raise Conflict(f"the host at {pool.url} now masters pool {probed.pool_uuid}, not "
                       f"{pool.pool_uuid} that node {node.name} is: nothing re-pinned")
    _check_confirmed(probed, confirmed)
    old = {m["host_uuid"]: m["sha256"] for m in pool.members}
    new = {m.host_uuid: m.sha256 for m in probed.members}
    changed = {h: {"from": shown(old[h]) if h in old else None,
                   "to": shown(new[h]) if h in new else None}
               for h in sorted(old.keys() | new.keys()) if old.get(h) != new.get(h)}
    pool.members = [m.stored() for m in probed.members]
    audit.record(db, actor, "node.xcpng-repin", f"node/{node.id}", name=node.name,
                 changed=changed)
    return pool
