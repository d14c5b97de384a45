"""Fleet hosts (servers added over SSH) and node labels: the service behind the API."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from controller.db.models import FleetHost, Node
from controller.errors import Conflict, InvalidInput
from controller.fleet import onboard
from controller.fleet.inventory import MAX_LABELS, check_labels, label_group
from controller.fleet.keys import (
    HostKeyError,
    ensure_fleet_key,
    fingerprint,
    normalize_fingerprint,
    parse_public_key,
)
from controller.fleet.schemas import FleetHostCreate
from controller.region import Region
from controller.services import audit
from controller.services import nodes as node_service


def host_key_sha256(host: FleetHost) -> str:
    return fingerprint(parse_public_key(host.host_key)[1])


def _refuse_taken(db: Session, body: FleetHostCreate, adopting: bool) -> None:
    taken = db.scalar(select(FleetHost).where(or_(
        FleetHost.name == body.name,
        (FleetHost.address == body.address) & (FleetHost.port == body.port))))
    if taken is not None:
        raise Conflict(f"{body.address} is in the region already, as {taken.name}"
                       if taken.name != body.name else
                       f"a server named {body.name} is in the region already "
                       f"({taken.address})")
    if not adopting and db.scalar(select(Node.id).where(Node.name == body.name)) is not None:
        raise Conflict(f"a node named {body.name} joined the region meanwhile: add it again")


def reported_host_keys(db: Session, name: str) -> frozenset[str] | None:
    """The fingerprints of the SSH host keys the node `name` reported over its own mTLS
    identity (an appliance node joins by itself, then is adopted into the fleet); None
    when no node has that name. InvalidInput when the node reported none."""
    node = db.scalar(select(Node).where(Node.name == name))
    if node is None:
        return None
    found = set()
    for line in (node.inventory or {}).get("ssh_host_keys") or []:
        try:
            found.add(fingerprint(parse_public_key(line)[1]))
        except HostKeyError:
            continue
    if not found:
        raise InvalidInput(f"node {name} has reported no SSH host key (its agent has not "
                           "reported yet, or is older): it cannot be added to the fleet yet")
    return frozenset(found)


def _pin(body: FleetHostCreate, reported: frozenset[str] | None) -> onboard.Pin:
    """The operator's pin; else, for a node that joined already, the keys it reported."""
    if body.known_hosts is not None:
        return onboard.Pin.from_known_hosts(body.known_hosts, body.address, body.port)
    if body.host_key_sha256 is None:
        if reported is None:
            raise InvalidInput("give the server's host key: host_key_sha256 or known_hosts "
                               f"(only a node that joined already, which {body.name} is not, "
                               "vouches for its own)")
        return onboard.Pin(reported)
    try:
        return onboard.Pin(frozenset({normalize_fingerprint(body.host_key_sha256)}))
    except HostKeyError as e:
        raise InvalidInput(f"host_key_sha256: {e}") from e


def _check_adopted(body: FleetHostCreate, reported: frozenset[str] | None,
                   host_key: str) -> None:
    """HostKeyMismatch when the server reached is not the joined node of that name."""
    presented = fingerprint(parse_public_key(host_key)[1])
    if reported is not None and presented not in reported:
        raise onboard.HostKeyMismatch(
            f"{body.address} presents host key {presented}, which node {body.name} did not "
            f"report ({', '.join(sorted(reported))}): it is another server; refused")


def add(region: Region, actor: str, body: FleetHostCreate) -> FleetHost:
    """Add the server once its host key matched the pin, it qualified and took the fleet
    key. A node that joined by itself (from the appliance ISO) is adopted under its name:
    the server must present a host key that node reported, and the operator's pin, when
    given, must match too. No database write is held while the server is spoken to.
    Every refusal is audited with its cause, then raised."""
    target = f"fleet-host/{body.name}"
    try:
        with region.reads() as db:
            reported = reported_host_keys(db, body.name)
            _refuse_taken(db, body, adopting=reported is not None)
        pin = _pin(body, reported)
        client, host_key = onboard.connect(body.address, body.port, body.user,
                                           body.ssh_private_key, pin)
        try:
            _check_adopted(body, reported, host_key)
            report = onboard.qualify_remote(client, body.profile)
            why = onboard.unfit(report)
            if why is not None:
                raise onboard.OnboardingError(
                    f"{body.address} does not pass the {body.profile} profile: {why}",
                    report=report.model_dump(mode="json"))
            onboard.authorize(client, ensure_fleet_key(region.config.data_dir))
        finally:
            client.close()
        with region.sessions() as db, db.begin():
            _refuse_taken(db, body, adopting=reported is not None)  # or added meanwhile
            host = FleetHost(name=body.name, address=body.address, port=body.port,
                             user=body.user, host_key=host_key, role=body.role,
                             qualification=report.model_dump(mode="json"), created_by=actor)
            db.add(host)
            db.flush()
            audit.record(db, actor, "fleet.add", target, address=body.address,
                         port=body.port, host_key_sha256=host_key_sha256(host),
                         verdict=report.verdict, adopted=reported is not None)
            db.expunge(host)
        return host
    except Exception as e:
        audit.record_now(region.sessions, actor, "fleet.add", target, "refused",
                         address=body.address, error=str(e)[:500])
        raise


def _refuse_group_clash(db: Session, node: Node, changes: dict[str, str]) -> None:
    """InvalidInput when a new label's inventory group is another label's (rack.a=x and
    rack_a=x are both label_rack_a_x): a playbook aimed at one would reach both."""
    groups: dict[str, tuple[str, str]] = {}
    for labels in db.scalars(select(Node.labels).where(Node.id != node.id)):
        for key, value in (labels or {}).items():
            groups[label_group(key, value)] = (key, value)
    for key, value in node.labels.items():
        groups.setdefault(label_group(key, value), (key, value))
    for key, value in changes.items():
        other = groups.get(label_group(key, value))
        if other is not None and other != (key, value):
            raise InvalidInput(f"label {key}={value} would share the inventory group "
                               f"{label_group(key, value)} with {other[0]}={other[1]}: "
                               "name it otherwise")
        groups[label_group(key, value)] = (key, value)


def set_labels(db: Session, actor: str, ref: str, changes: dict[str, str],
               remove: list[str]) -> Node:
    """Set and remove a node's labels; InvalidInput for a bad key or value, or too many."""
    node = node_service.find(db, ref)
    check_labels(changes)
    labels: dict[str, Any] = {k: v for k, v in node.labels.items() if k not in remove}
    labels.update(changes)
    if len(labels) > MAX_LABELS:
        raise InvalidInput(f"a node has at most {MAX_LABELS} labels")
    _refuse_group_clash(db, node, changes)
    node.labels = labels
    audit.record(db, actor, "node.label", f"node/{node.id}", set=changes, remove=remove)
    return node
