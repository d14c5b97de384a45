"""Live migration of a VM between nodes: asked here, carried out by the two nodes' agents.

A migration runs in two phases, each a change of the two nodes' desired states:
`preparing` (the target readies the VM's directory, seed, networks and firewall
rules) and, once the target reports it ready, `migrating` (the source moves it,
peer to peer). The target's report of the VM running there, defined, decides the
outcome even when the source said nothing (it may have crashed after the
switchover); the source's report of a failure of this very migration ends it with
the VM still running on the source. Either way the instance row changes in one
transaction with the operation, the audit entry and both nodes' generations.

In a region whose disks are each node's own (localfs) the move copies the root disk
with the memory (`copy_disks`): the target also fetches the image and makes an empty
overlay of the same size for the copy, so it must have room for the root disk, and
preparing may take as long as the image's download.

A stopped VM moves cold. On shared storage (rbd) it is given to the target at once:
defined there on its disk, dropped here, never its disk (`reassign_stopped`). On local
storage it goes the way of a live move, its disk copied, but started paused on the
source for the move and turned off by the target on arrival: its guest never runs
(see agent/drivers/hypervisor/libvirt/migrate.py). Its arrival is the target's report
of it defined and stopped there.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.protocol import ObservedVm, ObservedVmState
from controller.config import ControllerConfig
from controller.db.models import Instance, Node, Operation, Volume, as_utc
from controller.errors import Conflict
from controller.services import (
    audit,
    desired,
    instances,
    networks,
    nodes,
    operations,
    scheduler,
)

log = logging.getLogger(__name__)

KIND = "instance.migrate"
DEFAULT_MAX_DOWNTIME_MS = 300
PREPARE_TIMEOUT = timedelta(seconds=120)  # the target is ready by then, or the move fails
# the same with the disks copied: the target may first download the VM's image
PREPARE_TIMEOUT_COPY = timedelta(seconds=600)
DOWN_FOR_GOOD_S = 3600.0  # a failed move's target silent this long is let go unheard


def start(db: Session, actor: str, inst: Instance, to: str | None, config: ControllerConfig,
          *, bandwidth_mib_s: int = 0, max_downtime_ms: int = DEFAULT_MAX_DOWNTIME_MS,
          snap: scheduler.Snapshot | None = None) -> Operation:
    """Ask for `inst` moved to node `to` (None: the scheduler picks one): live if it
    runs, cold if it is stopped (see the module's docstring).

    Refused (Conflict, NoValidHost; nothing changed) when the VM is busy, neither running
    nor stopped, holds a GPU, has volumes on local storage, or no node can take it (on
    local storage also for want of room for its root disk). After success both nodes'
    desired states carry the migration (with the disk copy on local storage) and an
    operation follows it; a stopped VM on shared storage is the target's at once, its
    operation done. `snap`: a snapshot of the region the caller read (its nodes locked)
    for several moves: used instead of reading the region again, and the move added to it.
    """
    db.refresh(inst, with_for_update=True)  # one move of it at a time, whoever asks
    cold = stopped(inst)
    _refuse(db, inst, config, cold)
    source = inst.node
    candidates = snap.nodes if snap is not None else list(
        db.scalars(select(Node).order_by(Node.name).with_for_update()))
    pinned = nodes.find(db, to) if to is not None else None
    for node in (source, pinned):
        if node is not None and scheduler.is_xapi_pool(node):
            raise Conflict(f"node {node.name} is an XCP-ng pool: Vauban moves no VM into or "
                           "out of a pool (its own pool moves VMs between its hosts)")
    if pinned is not None and pinned.id == source.id:
        raise Conflict(f"instance '{inst.name}' is already on node {source.name}")
    if cold and config.storage == "rbd":  # its disk is where every node reaches it
        target = reassign_stopped(db, actor, inst, config, candidates, pinned, snap)
        op = operations.start_on(db, KIND, inst.id, inst.name, target.id, actor,
                                 target.generation, inst.power_seq,
                                 project_id=inst.project_id)
        operations.finish(op)
        return op
    copy_disks = config.storage != "rbd"  # each node's own disks: the root disk goes along
    needs = [f for f, wanted in (("copy_disks", copy_disks), ("cold", cold)) if wanted]
    for node in (source, pinned):
        if node is not None and not migration_ready(node):
            raise Conflict(f"node {node.name} is not ready for live migration: its libvirt "
                           "TLS listener is not up (see vauban node show)")
        if node is not None and (lacking := _lacking(node, needs)):
            raise Conflict(f"node {node.name}'s agent {lacking}")
    unready = tuple((n.id, "is not ready for live migration (libvirt TLS)")
                    for n in candidates if not migration_ready(n)) + tuple(
        (n.id, f"its agent {lacking}") for n in candidates
        if migration_ready(n) and (lacking := _lacking(n, needs)))
    pol = instances.policy(config)
    request = scheduler.PlacementRequest(
        inst.vcpus, inst.memory_mib, pinned.id if pinned else None,
        disk_gib=instances.root_disk_gib_of(inst.root_disk_gib, inst.image) if copy_disks
        else 0, excluded_node_ids=frozenset({source.id}), refusals=unready)
    placement = scheduler.place(snap or scheduler.snapshot(db, candidates, pol), request,
                                pol, datetime.now(UTC))
    target = db.get_one(Node, placement.node_id)
    if desired.migration_address(target) is None:
        raise Conflict(f"node {target.name} has not reported its address yet; "
                       "it cannot take a VM by migration")
    if snap is not None:
        snap.took(target.id, inst.vcpus, inst.memory_mib, request.disk_gib)
    inst.migration_target_node_id = target.id
    inst.migration_seq += 1
    inst.migration_phase = "preparing"
    inst.migration_bandwidth_mib_s = bandwidth_mib_s
    inst.migration_max_downtime_ms = max_downtime_ms
    inst.migration_copy_disks = copy_disks
    desired.bump(source)
    generation = desired.bump(target)
    db.flush()
    networks.bump_carriers(db, networks.instance_network_ids(db, inst),
                           exclude_node_id=None)  # the target joins the VM's overlays
    op = operations.start_on(db, KIND, inst.id, inst.name, source.id, actor, generation,
                             inst.power_seq, project_id=inst.project_id)
    copied: dict[str, Any] = {"copy_disks": True} if copy_disks else {}  # rbd: as before
    if cold:
        copied["cold"] = True
    audit.record(db, actor, KIND, f"instance/{inst.id}", name=inst.name,
                 source=source.name, to=target.name, bandwidth_mib_s=bandwidth_mib_s,
                 max_downtime_ms=max_downtime_ms, migration=inst.migration_seq, **copied)
    return op


def running(inst: Instance) -> bool:
    """Whether the VM runs and is to: it moves live."""
    return inst.desired_power == "running" and \
        inst.observed_state == ObservedVmState.RUNNING.value


def stopped(inst: Instance) -> bool:
    """Whether the VM is stopped and is to stay so: it moves cold."""
    return inst.desired_power == "stopped" and \
        inst.observed_state == ObservedVmState.STOPPED.value


def reassign_stopped(db: Session, actor: str, inst: Instance, config: ControllerConfig,
                     candidates: list[Node], pinned: Node | None = None,
                     snap: scheduler.Snapshot | None = None) -> Node:
    """Give the stopped VM on shared storage to `pinned` or the scheduler's choice among
    `candidates` (locked by the caller): it is defined there on its disk; its old node
    drops its definition, never the disk. The target; NoValidHost (nothing changed)
    when no node can take it. `snap`: as for `start`."""
    source = inst.node
    pol = instances.policy(config)
    placement = scheduler.place(
        snap or scheduler.snapshot(db, candidates, pol),
        scheduler.PlacementRequest(inst.vcpus, inst.memory_mib,
                                   pinned.id if pinned else None,
                                   excluded_node_ids=frozenset({source.id})),
        pol, datetime.now(UTC))
    target = db.get_one(Node, placement.node_id)
    if snap is not None:
        snap.took(target.id, inst.vcpus, inst.memory_mib)
    inst.node_id, inst.node = target.id, target
    for vol in db.scalars(select(Volume).where(Volume.instance_id == inst.id)):
        vol.steward_node_id = target.id
    desired.bump(source)
    desired.bump(target)
    db.flush()
    networks.bump_carriers(db, networks.instance_network_ids(db, inst), exclude_node_id=None)
    audit.record(db, actor, "instance.move", f"instance/{inst.id}", "succeeded",
                 name=inst.name, source=source.name, to=target.name, cold=True)
    log.info("stopped VM %s moved from node %s to %s", inst.name, source.name, target.name)
    return target


def _lacking(node: Node, needs: list[str]) -> str | None:
    """Why the node's agent cannot take part in a move that `needs` these migration
    features (an agent from before them would refuse the order), or None."""
    has = set((node.inventory or {}).get("migration_features") or [])
    missing = [f for f in needs if f not in has]
    if not missing:
        return None
    version = (node.inventory or {}).get("agent_version") or "of an unknown version"
    words = {"copy_disks": "copy a local disk with a VM", "cold": "move a stopped VM"}
    return (f"({version}) cannot {' or '.join(words[f] for f in missing)}: upgrade it "
            "(vauban rollout run --upgrade)")


def migration_ready(node: Node) -> bool:
    """Whether the node's libvirtd takes and makes migrations (TLS in place, listening)."""
    return bool((node.inventory or {}).get("migration_ready"))


def _refuse(db: Session, inst: Instance, config: ControllerConfig, cold: bool) -> None:
    """Conflict naming why `inst` cannot move now (live, or `cold`: stopped)."""
    what = f"instance '{inst.name}'"
    if inst.deleting:
        raise Conflict(f"{what} is being deleted")
    operations.refuse_if_busy(db, inst.id, what)
    if inst.gpus or inst.vgpus:
        held = ", ".join([g.address for g in inst.gpus] + [f"vGPU {v.id}" for v in inst.vgpus])
        raise Conflict(f"{what} has a passed-through GPU ({held}): a VM holding a GPU "
                       "cannot be migrated; stop it and start it elsewhere instead")
    if config.storage != "rbd":
        _refuse_local(db, inst, config)
    if not cold and not running(inst):
        raise Conflict(f"{what} is in state {inst.observed_state or 'new'} while it is to be "
                       f"{inst.desired_power}: a VM moves once it is running (live) or "
                       "stopped (cold); wait for it to get there")
    if inst.migration_target is not None:
        raise Conflict(f"{what} is still settling its last migration to node "
                       f"{inst.migration_target.name}; wait for that node's report")
    moved_by_node = not cold or config.storage != "rbd"  # rbd: a stopped VM is just given
    if moved_by_node and nodes.node_state(inst.node, datetime.now(UTC),
                                          config.node_down_after_s) != "up":
        raise Conflict(f"{what} is on node {inst.node.name}, which is not up: it moves "
                       "only from a node that answers (its agent carries out the move)")
    busy = db.scalar(select(Operation.id).join(Volume, Volume.id == Operation.target_id)
                     .where(Volume.instance_id == inst.id,
                            Operation.state.in_(operations.ACTIVE)).limit(1))
    if busy is not None:
        raise Conflict(f"a volume of {what} has operation {busy} in progress; wait for it",
                       operation=busy)


def _refuse_local(db: Session, inst: Instance, config: ControllerConfig) -> None:
    """Conflict naming why `inst`, whose disk is its node's own, cannot move with it now:
    only its root disk is copied (by the migration itself)."""
    what = f"instance '{inst.name}'"
    volumes = sorted(db.scalars(select(Volume.name).where(Volume.instance_id == inst.id)))
    if volumes:
        raise Conflict(f"{what} has volumes attached ({', '.join(volumes)}): detach them "
                       "first: only the root disk is copied when a VM on local storage "
                       f"({config.storage}) moves")


def observe_target(db: Session, node: Node, seen: dict[str, ObservedVm]) -> None:
    """What the target reports of the VMs migrating to it: ready (the source may start),
    not ready and why (shown on the operation while it waits), or running here (the move
    is done). A move whose operation ended without the VM running here is called off."""
    moving = db.scalars(select(Instance).where(Instance.migration_target_node_id == node.id))
    for inst in moving:
        vm = seen.get(inst.id)
        report = vm.migration if vm is not None else None
        if report is not None and report.seq != inst.migration_seq:
            continue  # of an earlier move
        if _arrived(inst, vm):
            _complete(db, inst, node, report.downtime_ms if report else None)
        elif not _operation(db, inst):
            _end(db, inst)  # failed or expired meanwhile: the target lets go
        elif report is not None and report.state == "ready" and \
                inst.migration_phase == "preparing":
            inst.migration_phase = "migrating"
            desired.bump(inst.node)
            _say(db, inst, None)
        elif inst.migration_phase == "preparing" and vm is not None and vm.error:
            _say(db, inst, f"node {node.name} is not ready to take the VM: {vm.error}")


def _arrived(inst: Instance, vm: ObservedVm | None) -> bool:
    """Whether the target's report says the VM is its own now: running there (live), or
    defined there and turned off (cold: a stopped VM's move, its report completed)."""
    if vm is None:
        return False
    if inst.desired_power == "stopped":
        return vm.state is ObservedVmState.STOPPED and vm.migration is not None and \
            vm.migration.state == "completed"
    return vm.state is ObservedVmState.RUNNING


def _say(db: Session, inst: Instance, message: str | None) -> None:
    """How the move stands, in words, on its operation (None: nothing to add)."""
    op = _operation(db, inst)
    if op is not None and op.message != message:
        op.message = message


def observe_source(db: Session, inst: Instance, vm: ObservedVm | None) -> None:
    """What the source reports of a VM it moves: progress, or a failure of this move (the
    VM still runs there). A target not ready in time fails the move too."""
    if inst.migration_phase == "failed" and inst.migration_target is not None and \
            nodes.node_state(inst.migration_target, datetime.now(UTC),
                             DOWN_FOR_GOOD_S) == "down":
        _end(db, inst)  # the target has been silent for long: it has no copy running
        return
    op = _operation(db, inst)
    if op is None:
        return
    report = vm.migration if vm is not None else None
    if report is not None and report.seq == inst.migration_seq:
        if report.state == "failed":
            _fail(db, inst, op, report.error or "the source node reported a failure")
        elif report.state == "running":
            op.state, op.progress = "running", max(op.progress, 10 + report.progress * 85 // 100)
        return
    limit = PREPARE_TIMEOUT_COPY if inst.migration_copy_disks else PREPARE_TIMEOUT
    if inst.migration_phase == "preparing" and datetime.now(UTC) - as_utc(op.created_at) > limit:
        target = inst.migration_target.name if inst.migration_target else "?"
        why = f" ({op.message})" if op.message else ""  # the target's own words, if any
        _fail(db, inst, op, f"node {target} did not get ready to take the VM within "
                            f"{int(limit.total_seconds())} s{why}")


def _operation(db: Session, inst: Instance) -> Operation | None:
    return next((o for o in operations.active_for(db, inst.id) if o.kind == KIND), None)


def _complete(db: Session, inst: Instance, target: Node, downtime_ms: int | None) -> None:
    """The VM runs on `target`: it is that node's now, with its volumes."""
    source = inst.node
    op = _operation(db, inst)
    seq = inst.migration_seq
    _end(db, inst)
    inst.node_id, inst.node = target.id, target
    for vol in db.scalars(select(Volume).where(Volume.instance_id == inst.id)):
        vol.steward_node_id = target.id
    desired.bump(target)
    db.flush()
    networks.bump_carriers(db, networks.instance_network_ids(db, inst), exclude_node_id=None)
    if op is not None:
        operations.finish(op)
    audit.record(db, op.requested_by if op else "controller", KIND, f"instance/{inst.id}",
                 "succeeded", name=inst.name, source=source.name, to=target.name,
                 migration=seq, downtime_ms=downtime_ms)


def _fail(db: Session, inst: Instance, op: Operation, error: str) -> None:
    """The move failed: its operation ends, and the source keeps (or gets back) the VM.
    The target is let go only once it reports that it does not run the VM (see
    observe_target): libvirt may have failed after the switchover, and then the VM runs
    there and the move completes after all."""
    target = inst.migration_target.name if inst.migration_target else "?"
    seq = inst.migration_seq
    inst.migration_phase = "failed"
    desired.bump(inst.node)  # no more order to move it
    if inst.migration_target is not None:  # its next report is heard in full, not skipped
        desired.bump(inst.migration_target)
    operations.finish(op, error=error)
    audit.record(db, op.requested_by, KIND, f"instance/{inst.id}", "failed", name=inst.name,
                 source=inst.node.name, to=target, migration=seq, reason=error)


def _end(db: Session, inst: Instance) -> None:
    """No migration in flight any more: both nodes (and the overlays' peers) learn it."""
    target = inst.migration_target
    inst.migration_target_node_id, inst.migration_target = None, None
    inst.migration_phase = None
    desired.bump(inst.node)
    if target is not None:
        desired.bump(target)
    db.flush()
    networks.bump_carriers(db, networks.instance_network_ids(db, inst), exclude_node_id=None)


def cancel(db: Session, actor: str, inst: Instance) -> Operation:
    """Call off the VM's migration under way: its operation fails, saying who called it
    off; the source aborts a copy in flight (past the switchover it cannot: then the VM
    runs on the target, and the target's report completes the move after all, as for
    any move that failed after its switchover). Conflict when no move is under way."""
    db.refresh(inst, with_for_update=True)
    op = _operation(db, inst)
    if op is None or inst.migration_phase not in ("preparing", "migrating"):
        raise Conflict(f"instance '{inst.name}' has no migration under way")
    target = inst.migration_target.name if inst.migration_target else "?"
    audit.record(db, actor, "instance.migrate-cancel", f"instance/{inst.id}", name=inst.name,
                 source=inst.node.name, to=target, migration=inst.migration_seq,
                 phase=inst.migration_phase)
    _fail(db, inst, op, f"called off by {actor} while "
                        f"{'copying' if inst.migration_phase == 'migrating' else 'preparing'}; "
                        f"the VM stays on node {inst.node.name}")
    return op


def abandon(db: Session, inst: Instance) -> None:
    """The VM is being deleted: any move of it is called off (its operation is superseded
    by the caller)."""
    if inst.migration_target_node_id is not None:
        _end(db, inst)
