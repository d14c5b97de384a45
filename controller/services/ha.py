"""What operators do for HA: a node's BMC credentials, vouching that a lost node is off,
and taking a fenced node back once it is repaired (controller.ha.failover does the rest)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from controller.db.models import Failover, Node, NodeBmc, as_utc
from controller.errors import Conflict, InvalidInput, NotFound
from controller.ha.bmc import Bmc, BmcError
from controller.ha.failover import FenceError, active_failover, lost_node
from controller.ha.fencer import RegionFencer, bmc_purpose
from controller.secretbox import RegionKey
from controller.services import audit, desired

BmcCheck = Callable[[Bmc], str]  # the power state a BMC reads now; BmcError if it cannot


def set_bmc(db: Session, actor: str, node: Node, box: RegionKey, *, address: str, port: int,
            username: str, password: str,
            check: BmcCheck = lambda bmc: bmc.power_state()) -> tuple[NodeBmc, str]:
    """Keep how to reach the node's BMC (IPMI), once the BMC answered with these
    credentials: (the record, the power state it read). InvalidInput with the BMC's own
    answer when it does not; then nothing changed. The password is sealed for this node."""
    try:
        power = check(Bmc(node=node.name, address=address, port=port, username=username,
                          password=password))
    except BmcError as e:
        raise InvalidInput(f"the BMC did not accept these settings: {e}") from e
    bmc = db.get(NodeBmc, node.id) or NodeBmc(node_id=node.id)
    bmc.kind, bmc.address, bmc.port, bmc.username = "ipmi", address, port, username
    bmc.password_sealed = box.seal(bmc_purpose(node.id), password.encode())
    db.add(bmc)
    audit.record(db, actor, "node.bmc", f"node/{node.id}", name=node.name, kind="ipmi",
                 address=address, port=port, username=username)
    return bmc, power


def get_bmc(db: Session, node: Node) -> NodeBmc:
    bmc = db.get(NodeBmc, node.id)
    if bmc is None:
        raise NotFound(f"node {node.name} has no BMC configured")
    return bmc


def unset_bmc(db: Session, actor: str, node: Node) -> None:
    db.delete(get_bmc(db, node))
    audit.record(db, actor, "node.bmc", f"node/{node.id}", name=node.name, removed=True)


def confirm_powered_off(db: Session, actor: str, node: Node) -> Failover:
    """The operator vouches that the lost node's power is off (its BMC cannot say so):
    its failover goes on to cut it off from Ceph. Conflict when none waits on that."""
    fo = active_failover(db, node.id)
    if fo is None or fo.state != "detected":
        raise Conflict(f"no failover of node {node.name} waits for its power to be cut")
    fo.state, fo.claimed_until, fo.attempts = "powered-off", None, 0
    fo.reason = f"powered off as {actor} confirmed; cutting it off from Ceph (blocklist)"
    audit.record(db, actor, "node.fence", f"node/{node.id}", "succeeded", name=node.name,
                 step="power-off", vouched_by=actor)
    return fo


def recover(db: Session, actor: str, node: Node, fencer: RegionFencer | None) -> Node:
    """Take a fenced node back (repaired, rebooted): its Ceph blocklist entry is lifted
    and it takes VMs again. Conflict when it was not fenced, while its failover is still
    under way, or while it has not reported since it was fenced."""
    if node.fenced_at is None:
        raise Conflict(f"node {node.name} was not fenced")
    if active_failover(db, node.id) is not None:
        raise Conflict(f"node {node.name} is still being failed over (its HA VMs wait for "
                       "room elsewhere): it cannot be taken back before they moved")
    seen = node.last_seen_at
    if seen is None or as_utc(seen) <= as_utc(node.fenced_at):
        raise Conflict(f"node {node.name} has not reported since it was fenced: power it "
                       "on (repaired) first; its agent then reports, and cannot write to "
                       "Ceph until it is recovered")
    if fencer is not None:
        try:
            fencer.restore_storage(lost_node(db, node))
        except FenceError as e:
            raise Conflict(str(e)) from e
    node.fenced_at = None
    desired.bump(node)
    audit.record(db, actor, "node.recover", f"node/{node.id}", name=node.name,
                 at=datetime.now(UTC).isoformat())
    return node
