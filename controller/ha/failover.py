"""HA failover: a lost node is fenced, then its HA VMs are restarted on other nodes.

A node is lost when its agent has been silent for the down delay *and* its storage
heartbeat has stopped too (a node cut off from the controller but still writing to
Ceph is alive: it keeps its VMs). Fencing comes first, always, in two steps that are
each confirmed before the next one starts: the node is powered off through its BMC
(the BMC must read the power back as off), then its Ceph client address is
blocklisted (it can no longer write a block even if it still runs). Only then are
its HA VMs given to other nodes, which define them on their existing disks.

Every step is a row in `failovers` whose state is committed before the next step
starts; a step is claimed for its longest duration, so two controller processes never
run one at once and a controller that died mid-step has it retried once the claim
lapses (powering off an off node and blocklisting a blocklisted address change
nothing; the restart is one transaction). A failover therefore completes once. A
step that fails waits, with its reason in words for the operator, and is retried; no
VM is restarted meanwhile. Every step, failed or not, is audited.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from controller.config import ControllerConfig
from controller.db.models import FAILOVER_OPEN, Failover, Instance, Node, NodeBmc, Volume, as_utc
from controller.errors import NoValidHost
from controller.services import (
    audit,
    desired,
    instances,
    migrations,
    networks,
    operations,
    scheduler,
)

log = logging.getLogger(__name__)

ACTIVE = FAILOVER_OPEN
RETRY = timedelta(seconds=10)  # a failed step is tried again after this


class FenceError(Exception):
    """A fencing step could not be confirmed; the message says why, for the operator."""


@dataclass(frozen=True)
class LostNode:
    """What a fencing step needs to know of the node (read in the step's transaction)."""

    id: str
    name: str
    addresses: tuple[str, ...]  # its Ceph client IPs (as it reports them; else its underlay)
    bmc: NodeBmc | None


class Fencer(Protocol):
    """The region's means of fencing (controller.ha.fencer.RegionFencer; fakes in tests)."""

    def storage_alive(self, node: LostNode) -> bool:
        """Whether the node still renews its storage heartbeat (judged by our clock)."""

    def power_off(self, node: LostNode) -> None:
        """Return once the node's power is confirmed off; FenceError otherwise."""

    def cut_storage(self, node: LostNode) -> None:
        """Return once the node can no longer write to Ceph; FenceError otherwise."""


def ceph_client_ips(node: Node) -> tuple[str, ...]:
    """The IPs the node's Ceph clients use, from its report ("ip:port/nonce" each, the
    `v2:`/`v1:` forms too); its underlay address when it reported none."""
    found: list[str] = []
    for addr in (node.storage_status or {}).get("client_addrs") or []:
        m = re.match(r"^(?:v[12]:)?(\[[0-9a-fA-F:]+\]|[0-9.]+):\d+/\d+$", str(addr))
        if m is None:
            continue
        try:
            ip = str(ipaddress.ip_address(m.group(1).strip("[]")))
        except ValueError:
            continue
        if ip not in found and not ipaddress.ip_address(ip).is_unspecified:
            found.append(ip)
    underlay = (node.inventory or {}).get("underlay_ip")
    return tuple(found) or ((str(underlay),) if underlay else ())


def lost_node(db: Session, node: Node) -> LostNode:
    bmc = db.get(NodeBmc, node.id)
    if bmc is not None:
        db.expunge(bmc)  # used after this transaction, read-only
    return LostNode(node.id, node.name, ceph_client_ips(node), bmc)


def active_failover(db: Session, node_id: str) -> Failover | None:
    return db.scalars(select(Failover).where(Failover.node_id == node_id,
                                             Failover.state.in_(ACTIVE))).first()


def tick(sessions: sessionmaker[Session], config: ControllerConfig, fencer: Fencer,
         now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
    """Open a failover for each newly lost node with HA VMs, then move every open one
    on by one step (those whose step is claimed or waits for its retry excepted)."""
    detect(sessions, config, fencer, now())
    with sessions() as db:
        due = list(db.scalars(select(Failover.id).where(Failover.state.in_(ACTIVE))
                              .order_by(Failover.created_at)))
    for failover_id in due:
        while advance(sessions, config, fencer, failover_id, now):
            pass  # each confirmed step is followed by the next at once


def detect(sessions: sessionmaker[Session], config: ControllerConfig, fencer: Fencer,
           now: datetime) -> None:
    silent_since = now - timedelta(seconds=config.node_down_after_s)
    with sessions() as db:
        has_ha = exists().where(Instance.node_id == Node.id, Instance.ha.is_(True),
                                Instance.deleting.is_(False))
        open_one = exists().where(Failover.node_id == Node.id, Failover.state.in_(ACTIVE))
        silent = [lost_node(db, n) for n in db.scalars(select(Node).where(
            Node.last_seen_at < silent_since, Node.fenced_at.is_(None), has_ha, ~open_one))]
    for node in silent:
        if fencer.storage_alive(node):
            continue  # cut off from us, not from its disks: alive, it keeps its VMs
        try:
            with sessions() as db, db.begin():
                if active_failover(db, node.id) is not None:
                    continue  # opened by another controller process meanwhile
                db.add(Failover(node_id=node.id, state="detected",
                                reason="fencing it: powering it off through its BMC"))
                audit.record(db, "controller", "node.lost", f"node/{node.id}", "observed",
                             name=node.name, silent_since=silent_since.isoformat())
        except IntegrityError:
            continue  # the same, at the same moment: one open failover per node (unique)
        log.warning("node %s is lost (no agent and no storage heartbeat): fencing it",
                    node.name)


def advance(sessions: sessionmaker[Session], config: ControllerConfig, fencer: Fencer,
            failover_id: str, now: Callable[[], datetime]) -> bool:
    """One step of one failover (see the module's docstring). True when a fencing step
    was confirmed: the next one is due at once (not a tick later)."""
    with sessions() as db, db.begin():
        fo = db.get(Failover, failover_id, with_for_update=True)
        if fo is None or fo.state not in ACTIVE or \
                (fo.claimed_until is not None and as_utc(fo.claimed_until) > now()):
            return False
        node = db.get_one(Node, fo.node_id)
        if fo.state == "fenced":
            _restart(db, config, fo, node, now())
            return False
        if fo.state == "detected" and node.last_seen_at is not None and \
                now() - as_utc(node.last_seen_at) < timedelta(seconds=config.node_down_after_s):
            _end(fo, "cancelled", "its agent reported again before it was fenced", now())
            audit.record(db, "controller", "node.fence", f"node/{node.id}", "cancelled",
                         name=node.name, reason=fo.reason)
            return False
        state, target = fo.state, lost_node(db, node)
        fo.claimed_until = now() + timedelta(seconds=config.fence_step_timeout_s)
    step = "power-off" if state == "detected" else "storage"
    log.info("node %s: fencing step %s started", target.name, step)
    try:
        if state == "detected":
            fencer.power_off(target)
        else:
            fencer.cut_storage(target)
    except FenceError as e:
        _step_failed(sessions, failover_id, state, step, target, str(e), now())
        return False
    with sessions() as db, db.begin():
        fo = db.get(Failover, failover_id, with_for_update=True)
        if fo is None or fo.state != state:
            return False  # an operator moved it on meanwhile (e.g. vouched it is off)
        fo.state = "powered-off" if state == "detected" else "fenced"
        fo.claimed_until, fo.attempts = None, 0
        fo.reason = ("cutting it off from Ceph (blocklist)" if fo.state == "powered-off"
                     else "restarting its HA VMs on other nodes")
        audit.record(db, "controller", "node.fence", f"node/{target.id}", "succeeded",
                     name=target.name, step=step)
    log.warning("node %s: fencing step %s confirmed", target.name, step)
    return True


def _step_failed(sessions: sessionmaker[Session], failover_id: str, state: str, step: str,
                 node: LostNode, why: str, now: datetime) -> None:
    reason = f"{why}; nothing restarted until node {node.name} is fenced"
    with sessions() as db, db.begin():
        fo = db.get(Failover, failover_id, with_for_update=True)
        if fo is None or fo.state != state:
            return
        # the same failure again (its measured waits aside) is not audited again
        first = _gist(fo.reason or "") != _gist(reason)
        fo.reason, fo.attempts = reason, fo.attempts + 1
        fo.claimed_until = now + RETRY
        if first:  # audited once per distinct reason, not at every retry
            audit.record(db, "controller", "node.fence", f"node/{node.id}", "failed",
                         name=node.name, step=step, reason=why)
    log.warning("node %s: fencing step %s failed: %s", node.name, step, why)


def _gist(reason: str) -> str:
    """A failure's words without the numbers that change from one try to the next."""
    return re.sub(r"\d+(\.\d+)?", "#", reason)


def _restart(db: Session, config: ControllerConfig, fo: Failover, node: Node,
             now: datetime) -> None:
    """Give the fenced node's HA VMs to other nodes, in this one transaction."""
    node.fenced_at = node.fenced_at or now
    waiting: list[str] = []
    moved = 0
    pol = instances.policy(config)
    candidates = list(db.scalars(select(Node).order_by(Node.name).with_for_update()))
    snap = scheduler.snapshot(db, candidates, pol)  # read once; each placement added to it
    for inst in db.scalars(select(Instance).where(
            Instance.node_id == node.id, Instance.ha.is_(True),
            Instance.deleting.is_(False)).order_by(Instance.name)):
        if inst.migration_phase == "migrating":
            # it may run on the migration's target already: that node's report decides
            # (the move completes, or ends once its operation expired); then it is seen here
            moving_to = inst.migration_target.name if inst.migration_target else "?"
            waiting.append(f"{inst.name}: was migrating to {moving_to}; waiting for that "
                           "node's report")
            continue
        if inst.migration_target_node_id is not None:  # only prepared: the move is off
            migrations.abandon(db, inst)
        try:
            placement = scheduler.place(
                snap, scheduler.PlacementRequest(inst.vcpus, inst.memory_mib,
                                                 excluded_node_ids=frozenset({node.id})),
                pol, now)
        except NoValidHost as e:
            waiting.append(f"{inst.name}: {_short(e.detail)}")
            continue
        snap.took(placement.node_id, inst.vcpus, inst.memory_mib)
        target = db.get_one(Node, placement.node_id)
        for op in operations.active_for(db, inst.id):  # its lost node will never settle them
            operations.finish(op, error=f"node {node.name} was lost; the VM was restarted "
                                        f"on node {target.name}")
        inst.node_id, inst.node = target.id, target
        for vol in db.scalars(select(Volume).where(Volume.instance_id == inst.id)):
            vol.steward_node_id = target.id
        desired.bump(target)
        db.flush()
        networks.bump_carriers(db, networks.instance_network_ids(db, inst),
                               exclude_node_id=None)
        audit.record(db, "controller", "vm.ha_restart", f"instance/{inst.id}", "succeeded",
                     name=inst.name, source=node.name, to=target.name, failover=fo.id)
        moved += 1
    desired.bump(node)
    if waiting:
        fo.reason = f"restarted {moved} VM(s); waiting for room for: " + "; ".join(waiting)
        fo.claimed_until = now + RETRY
        return
    _end(fo, "done", f"node {node.name} fenced; its HA VMs run on other nodes", now)
    log.warning("node %s fenced: %d HA VM(s) restarted elsewhere", node.name, moved)


def _short(detail: str, limit: int = 300) -> str:
    """A scheduler's refusal, cut short: it names every node of the region."""
    return detail if len(detail) <= limit else detail[:limit] + "…"


def _end(fo: Failover, state: str, reason: str, now: datetime) -> None:
    fo.state, fo.reason, fo.finished_at, fo.claimed_until = state, reason, now, None
