"""Node maintenance: the node takes no new VMs and its VMs are moved away.

`vauban node maintenance NODE on` marks the node (the scheduler refuses it from then
on) and opens an operation that the controller's evacuator drives: every few seconds
it starts migrations of the node's VMs, live for the running ones, cold for the stopped
ones (a few at a time per node, the scheduler choosing each target; stopped VMs on
shared storage all at once, their disks being where every node reaches them). A VM that
cannot move (a GPU, volumes on local storage, no node with room) is named with the reason
in the operation's message, and the operation stays running until the node is empty: it
completes only then. `off` makes the node schedulable again and ends an unfinished
operation.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from controller.config import ControllerConfig
from controller.db.models import Instance, Node, Operation
from controller.errors import Conflict, NoValidHost
from controller.services import (
    audit,
    instances,
    migrations,
    operations,
    scheduler,
)

log = logging.getLogger(__name__)

KIND = "node.maintenance"
MOVES_PER_NODE = 2  # live migrations at once out of one node: each takes its bandwidth


def active(db: Session, node: Node) -> Operation | None:
    return next((o for o in operations.active_for(db, node.id) if o.kind == KIND), None)


def set_maintenance(db: Session, actor: str, node: Node, on: bool) -> Operation | None:
    """Turn maintenance on (the operation that empties the node; the one under way if
    it is on already) or off (None; an unfinished operation ends, failed, saying so)."""
    running = active(db, node)
    if on:
        if running is not None:
            return running
        node.maintenance = True
        op = operations.start_on(db, KIND, node.id, node.name, node.id, actor,
                                 node.generation)
        op.message = "moving its VMs away"
        audit.record(db, actor, KIND, f"node/{node.id}", name=node.name, on=True)
        return op
    node.maintenance = False
    if running is not None:
        operations.finish(running, error="maintenance was turned off before the node was "
                                         "empty")
    audit.record(db, actor, KIND, f"node/{node.id}", name=node.name, on=False)
    return None


def evacuate_all(sessions: sessionmaker[Session], config: ControllerConfig) -> None:
    """One round of every maintenance under way (see the module's docstring)."""
    with sessions() as db, db.begin():
        ops = list(db.scalars(select(Operation).where(
            Operation.kind == KIND, Operation.state.in_(operations.ACTIVE))
            # several controller processes run this: each operation by one at a time
            .with_for_update(skip_locked=True)))
        for op in ops:
            node = db.get(Node, op.target_id)
            if node is None or not node.maintenance:
                operations.finish(op, error="the node left maintenance or the region")
                continue
            evacuate(db, op, node, config)


def evacuate(db: Session, op: Operation, node: Node, config: ControllerConfig) -> None:
    """Move what can move now; finish `op` once the node is empty."""
    left = list(db.scalars(select(Instance).where(Instance.node_id == node.id)
                           .order_by(Instance.name)))
    if not left:
        operations.finish(op)
        op.message = "the node is empty"
        audit.record(db, op.requested_by, KIND, f"node/{node.id}", "succeeded",
                     name=node.name)
        return
    moving = sum(1 for i in left if i.migration_target_node_id is not None)
    stuck: list[str] = []
    snap: scheduler.Snapshot | None = None  # the region read once per round, if needed
    for inst in left:
        if inst.deleting or inst.migration_target_node_id is not None or \
                operations.active_for(db, inst.id):
            continue  # going, or busy: looked at again next round
        try:
            if migrations.running(inst) or migrations.stopped(inst):
                at_once = migrations.stopped(inst) and config.storage == "rbd"  # no copy
                if at_once or moving < MOVES_PER_NODE:
                    if snap is None:
                        snap = scheduler.snapshot(db, list(db.scalars(
                            select(Node).order_by(Node.name).with_for_update())),
                            instances.policy(config))
                    migrations.start(db, op.requested_by, inst, None, config, snap=snap)
                    moving += 0 if at_once else 1
            else:
                stuck.append(f"{inst.name}: it is {inst.observed_state or 'being made'}; "
                             "it moves once running or stopped")
        except (Conflict, NoValidHost) as e:
            stuck.append(f"{inst.name}: {e.detail}")
    remaining = sum(1 for i in left if i.node_id == node.id)  # stopped ones moved at once
    op.state = "running"
    op.progress = max(op.progress, 10)
    op.message = (f"{remaining} VM(s) left; cannot move: " + "; ".join(stuck)) if stuck \
        else f"{remaining} VM(s) left, moving"
