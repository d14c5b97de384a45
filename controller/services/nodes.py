"""Join tokens, joining nodes, and whether a node is up."""

from __future__ import annotations

import ipaddress
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, CursorResult, and_, func, or_, select, update
from sqlalchemy.orm import Session

from agent.protocol import JoinRequest, JoinResponse
from controller.db.models import (
    FAILOVER_OPEN,
    AuditEvent,
    Failover,
    Instance,
    JoinToken,
    Node,
    NodeBmc,
    Volume,
    XapiPool,
    as_utc,
)
from controller.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NodeRemoved,
    NotFound,
    Unauthorized,
)
from controller.pki import LEAF_VALIDITY, CsrError, Issued, RegionCA
from controller.services import audit, desired, events
from controller.services.auth import sha256_hex


def node_state(node: Node, now: datetime, down_after_s: float) -> str:
    return state_of(node.last_seen_at, now, down_after_s)


def is_xapi_pool(node: Node) -> bool:
    """Whether the node is an XCP-ng pool (its agent talks XAPI to the pool's master)."""
    return (node.inventory or {}).get("hypervisor") == "xapi"


def state_of(last_seen_at: datetime | None, now: datetime, down_after_s: float) -> str:
    """new (never reported), up, or down (silent for longer than `down_after_s`)."""
    if last_seen_at is None:
        return "new"
    age = (now - as_utc(last_seen_at)).total_seconds()
    return "up" if age <= down_after_s else "down"


def state_is(state: str, now: datetime, down_after_s: float) -> ColumnElement[bool]:
    """SQL: the node's state (`state_of`, new, up or down) is `state`."""
    cutoff = now.astimezone(UTC) - timedelta(seconds=down_after_s)
    if state == "new":
        return Node.last_seen_at.is_(None)
    return Node.last_seen_at >= cutoff if state == "up" else Node.last_seen_at < cutoff


def announce_states(db: Session, now: datetime, down_after_s: float) -> int:
    """Tell, in an event, each node whose state (new, up, down) is not the one last told:
    a node goes down by staying silent, which no report records. Of several processes doing
    it at once, one tells each change. Returns how many were told."""
    told = 0
    cutoff = now.astimezone(UTC) - timedelta(seconds=down_after_s)
    told_as = func.coalesce(Node.announced_state, "")
    stale = or_(and_(Node.last_seen_at.is_(None), told_as != "new"),
                and_(Node.last_seen_at >= cutoff, told_as != "up"),
                and_(Node.last_seen_at < cutoff, told_as != "down"))
    for node_id, last_seen, announced in db.execute(
            select(Node.id, Node.last_seen_at, Node.announced_state).where(stale)).all():
        state = state_of(last_seen, now, down_after_s)
        if state == announced:
            continue
        same = Node.announced_state.is_(None) if announced is None \
            else Node.announced_state == announced
        result: CursorResult[Any] = db.execute(  # type: ignore[assignment]
            update(Node).where(Node.id == node_id, same).values(announced_state=state))
        if result.rowcount != 1:
            continue  # told by another process meanwhile
        node = db.get_one(Node, node_id)
        db.refresh(node)
        events.emit(db, "node.changed", events.describe(node))
        told += 1
    return told


def create_join_token(db: Session, actor: str, description: str,
                      ttl_seconds: int) -> tuple[str, JoinToken]:
    """A one-time secret; only its hash is stored, the secret is returned once."""
    secret = "vbj_" + secrets.token_urlsafe(32)
    row = JoinToken(
        secret_sha256=sha256_hex(secret),
        description=description,
        expires_at=datetime.now(UTC) + timedelta(seconds=ttl_seconds),
        created_by=actor,
    )
    db.add(row)
    db.flush()
    audit.record(db, actor, "join-token.create", f"join-token/{row.id}", ttl_seconds=ttl_seconds)
    return secret, row


def join_token_state(token: JoinToken, now: datetime) -> str:
    """used, revoked, expired or unused: whether it can still join a node, and if not why."""
    if token.used_at is not None:
        return "used"
    if token.revoked_at is not None:
        return "revoked"
    return "expired" if as_utc(token.expires_at) <= now else "unused"


def revoke_join_token(db: Session, actor: str, token_id: str) -> JoinToken:
    """Make an unspent join token unusable from now on; the record stays, listed as revoked.

    NotFound for an unknown id; Conflict, nothing changed, for a token already used (it
    joined its node; `vauban node remove` takes that node out). Revoking a revoked or
    expired token changes nothing more and is not an error."""
    row = db.get(JoinToken, token_id)
    if row is None:
        raise NotFound(f"join token {token_id} does not exist")
    if row.used_at is not None:
        raise Conflict(f"join token {token_id} was already used by node {row.used_by_node_id}; "
                       "to take that node out of the region, remove the node",
                       used_by_node_id=row.used_by_node_id)
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        audit.record(db, actor, "join-token.revoke", f"join-token/{token_id}",
                     description=row.description)
    return row


def join(db: Session, req: JoinRequest, ca: RegionCA,
         cert_lifetime: timedelta = LEAF_VALIDITY) -> JoinResponse:
    """Spend a join token: the new node gets an id and a certificate signed by the region CA.

    On any refusal nothing changes and the token stays unspent. Two joins with one token at
    once: the token is spent by one conditional update, so only one of them joins.
    """
    token = db.scalar(select(JoinToken).where(JoinToken.secret_sha256 == sha256_hex(req.token)))
    now = datetime.now(UTC)
    if token is None or join_token_state(token, now) != "unused":
        raise Unauthorized("the join token is unknown, already used, revoked or expired")
    node = _joining_node(db, token, req.name)
    try:
        issued = ca.sign_node_csr(req.csr_pem, node.id, cert_lifetime)
    except CsrError as e:
        raise InvalidInput(str(e)) from e
    node.cert_serial, node.cert_expires_at = issued.serial, issued.not_after
    spent: CursorResult[tuple[()]] = db.execute(  # type: ignore[assignment]
        update(JoinToken).where(JoinToken.id == token.id, JoinToken.used_at.is_(None),
                                JoinToken.revoked_at.is_(None))
        .values(used_at=now, used_by_node_id=node.id).execution_options(
            synchronize_session=False))
    if spent.rowcount != 1:  # spent or revoked since it was read
        raise Unauthorized("the join token is unknown, already used, revoked or expired")
    audit.record(db, f"join-token/{token.id}", "node.join", f"node/{node.id}", name=node.name)
    return JoinResponse(
        node_id=node.id, certificate_pem=issued.pem.decode(), ca_pem=ca.cert_pem().decode()
    )


def _joining_node(db: Session, token: JoinToken, name: str) -> Node:
    """The node a join with `token` makes, or the one made beforehand that the token was
    issued for (an enrolled XCP-ng pool): then `name` must be that node's."""
    if token.node_id is not None:
        node = db.get(Node, token.node_id)
        if node is None:
            raise Unauthorized("the join token is unknown, already used, revoked or expired")
        if name != node.name:
            raise InvalidInput(f"this join token is for node '{node.name}', not '{name}'",
                               field="name")
        return node
    if db.scalar(select(Node).where(Node.name == name)) is not None:
        raise Conflict(f"a node named '{name}' is already in the region")
    node = Node(name=name, cert_serial="")
    db.add(node)
    db.flush()
    return node


def renew_certificate(db: Session, node: Node, serial_used: str, csr_pem: str, ca: RegionCA,
                      lifetime: timedelta) -> Issued:
    """Sign a new client certificate for `node` (the CSR must name the node id as its common
    name) and make it the node's current one.

    The certificate the call was made with (`serial_used`) stays accepted beside the new
    one until the agent's first call with the new one (see `adopt_current_certificate`), so
    an agent that crashes before it saved the new certificate goes on with its old one and
    renews again. If the call was made with that kept certificate (the last renewal's
    certificate was never used), it stays the one kept, and the unused one is refused.
    InvalidInput (422) for a CSR that cannot be signed; nothing changes then.
    """
    try:
        issued = ca.sign_node_csr(csr_pem, node.id, lifetime, require_cn=True)
    except CsrError as e:
        raise InvalidInput(str(e)) from e
    kept = node.previous_cert_serial if serial_used == node.previous_cert_serial \
        else node.cert_serial
    audit.record(db, f"node:{node.name}", "node.certificate.renew", f"node/{node.id}",
                 serial=issued.serial, previous_serial=kept,
                 unused_serial=node.cert_serial if kept != node.cert_serial else None,
                 expires_at=issued.not_after.isoformat())
    node.previous_cert_serial = kept
    node.cert_serial, node.cert_expires_at = issued.serial, issued.not_after
    return issued


def issue_hypervisor_certificate(db: Session, node: Node, csr_pem: str, address: str,
                                 ca: RegionCA, lifetime: timedelta,
                                 role: str = "libvirt") -> Issued:
    """Sign `node`'s hypervisor certificate of `role` (CN its id, OU vauban-<role>; SAN
    its id, its name and `address`) and record `address` as the node's migration address
    (and, for libvirtd's, the certificate's serial).

    `address` must be the underlay address the node reports in its inventory, when it has
    reported one. InvalidInput (422) for a CSR that cannot be signed, Conflict (409) for an
    address other than the reported one; nothing changes then."""
    reported = (node.inventory or {}).get("underlay_ip")
    if reported and ipaddress.ip_address(reported) != ipaddress.ip_address(address):
        raise Conflict(f"migration_address {address} is not the underlay address this node "
                       f"reports ({reported})", reported_underlay_ip=reported)
    try:
        issued = ca.sign_hypervisor_csr(csr_pem, node.id, node.name, address, lifetime, role)
    except CsrError as e:
        raise InvalidInput(str(e)) from e
    audit.record(db, f"node:{node.name}", "node.hypervisor-certificate.issue",
                 f"node/{node.id}", role=role, serial=issued.serial,
                 previous_serial=node.hypervisor_cert_serial if role == "libvirt" else None,
                 migration_address=address,
                 previous_migration_address=node.migration_address,
                 expires_at=issued.not_after.isoformat())
    node.migration_address = address
    if role == "libvirt":  # the one other nodes' libvirtds admit
        node.hypervisor_cert_serial = issued.serial
    return issued


def adopt_current_certificate(db: Session, node_id: str, serial: str) -> bool:
    """The node called with its current certificate: the one it renewed away from is
    refused from now on. True when one was still kept (done once per renewal)."""
    result: CursorResult[tuple[()]] = db.execute(  # type: ignore[assignment]
        update(Node).where(Node.id == node_id, Node.cert_serial == serial,
                           Node.previous_cert_serial.is_not(None))
        .values(previous_cert_serial=None).execution_options(synchronize_session=False))
    return result.rowcount == 1


def find(db: Session, ref: str) -> Node:
    """A node by id or name, or NotFound."""
    node = db.get(Node, ref) or db.scalar(select(Node).where(Node.name == ref))
    if node is None:
        raise NotFound(f"node '{ref}' does not exist")
    return node


def clear_fence(db: Session, actor: str, node: Node) -> datetime:
    """Clear the fence `node` reports (agent.fencing): its desired state names the fence
    from now on, and its agent lifts exactly that one (a later fence stays). Returns the
    fence's time. Conflict, nothing changed, when the node reports no fence. Whoever
    clears it vouches that no other node runs the node's VMs; none is started by this."""
    if node.self_fenced_at is None:
        raise Conflict(f"node '{node.name}' reports no fence: there is nothing to clear")
    fenced = as_utc(node.self_fenced_at)
    node.fence_cleared_at = fenced
    desired.bump(node)
    audit.record(db, actor, "node.clear-fence", f"node/{node.id}", name=node.name,
                 self_fenced_at=fenced.isoformat())
    return fenced


def remove(db: Session, actor: str, node: Node) -> None:
    """Take `node` out of the region: its record goes, so from then on its certificate
    belongs to no node and every agent request made with it is refused (see
    `refusal_of_unknown`); its name is free for a node that joins again with a new token.

    Refused with Conflict, nothing changed, while VMs are placed on it (being deleted
    included: the node has not confirmed yet) or while it looks after volumes.
    """
    vms = list(db.scalars(select(Instance.name).where(Instance.node_id == node.id)
                          .order_by(Instance.name)))
    volumes = list(db.scalars(select(Volume.name).where(Volume.steward_node_id == node.id)
                              .order_by(Volume.name)))
    if vms or volumes:
        held = [f"{len(vms)} VM(s) ({', '.join(vms)})" if vms else "",
                f"looks after {len(volumes)} volume(s) ({', '.join(volumes)})"
                if volumes else ""]
        raise Conflict(f"node '{node.name}' still has " + " and ".join(h for h in held if h)
                       + "; delete or move them first", instances=vms, volumes=volumes)
    arriving = list(db.scalars(select(Instance.name).where(
        Instance.migration_target_node_id == node.id).order_by(Instance.name)))
    if arriving:
        raise Conflict(f"VM(s) {', '.join(arriving)} are migrating to node '{node.name}'; "
                       "wait until they moved or failed", instances=arriving)
    if db.scalar(select(Failover.id).where(Failover.node_id == node.id,
                                           Failover.state.in_(FAILOVER_OPEN))) is not None:
        raise Conflict(f"node '{node.name}' is being failed over; wait until its failover "
                       "ends (vauban node show)")
    audit.record(db, actor, "node.remove", f"node/{node.id}", name=node.name,
                 cert_serial=node.cert_serial)
    for row in [db.get(NodeBmc, node.id), db.get(XapiPool, node.id),
                *db.scalars(select(Failover).where(Failover.node_id == node.id))]:
        if row is not None:
            db.delete(row)  # its BMC, pool settings and failover history go with it
    db.flush()  # before the node row they point at
    db.delete(node)
    db.flush()


def refusal_of_unknown(db: Session, node_id: str) -> Forbidden | NodeRemoved:
    """Why a client certificate naming `node_id` (a node id, as its common name) belongs to
    no node: the node was removed (by whom and when, from the audit trail), or the region
    never had it."""
    removed = db.scalar(select(AuditEvent).where(AuditEvent.action == "node.remove",
                                                 AuditEvent.target == f"node/{node_id}")
                        .order_by(AuditEvent.seq.desc()).limit(1))
    if removed is None:
        return Forbidden("this client certificate does not belong to a node of the region")
    name = removed.detail.get("name", node_id)
    at = as_utc(removed.at).strftime("%Y-%m-%dT%H:%M:%SZ")
    return NodeRemoved(f"node '{name}' ({node_id}) was removed from the region by {removed.actor} "
                     f"at {at}; its certificate is no longer accepted. To bring this machine "
                     "back, remove its agent's data and join it again with a new join token")
