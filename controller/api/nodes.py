"""/api/v1/nodes and /api/v1/operations: the region's servers and its long actions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from controller import schemas
from controller.api.context import db, region
from controller.api.framework import ApiBlueprint, actor
from controller.api.paging import page
from controller.api.views import node_view, operation_view
from controller.authz import InProject, Level, Perm, Region
from controller.db.models import Failover, Node, NodeBmc, Operation, XapiPool
from controller.errors import NotFound
from controller.ha.ceph import HeartbeatView
from controller.queries import NodesQuery
from controller.services import maintenance, operations, scheduler, tenancy
from controller.services import nodes as node_service

api = ApiBlueprint("nodes", "/api/v1/nodes", "nodes")
ops_api = ApiBlueprint("operations", "/api/v1/operations", "operations")


@api.route("GET", "", access=Region(Perm.REGION_READ), query=NodesQuery,
           summary="List nodes, by name", responses={200: list[schemas.Node]})
def list_nodes(query: NodesQuery) -> Any:
    """The region's nodes, a page at a time, by name."""
    session = db()
    stmt = select(Node)
    if query.name is not None:
        stmt = stmt.where(Node.name == query.name)
    if query.label is not None:
        key, _, value = query.label.partition("=")
        stmt = stmt.where(Node.labels[key].as_string() == value)
    down = region().config.node_down_after_s
    if query.state is not None:
        stmt = stmt.where(node_service.state_is(query.state, datetime.now(UTC), down))
    found = page(session, stmt, Node.name, Node.id, query.limit, query.cursor)
    usage = scheduler.usage_by_node(session, [n.id for n in found.items])
    return found.map(lambda n: node_view(n, usage.get(n.id, scheduler.Usage()), down,
                                         storage_view(n.id)))


@api.route("GET", "/<ref>", access=Region(Perm.REGION_READ),
           summary="Show a node (by name or id)", responses={200: schemas.Node})
def show_node(ref: str) -> Any:
    session = db()
    node = node_service.find(session, ref)
    usage = scheduler.usage_by_node(session, [node.id]).get(node.id, scheduler.Usage())
    failover = session.scalars(select(Failover).where(Failover.node_id == node.id)
                               .order_by(Failover.created_at.desc())).first()
    return node_view(node, usage, region().config.node_down_after_s, storage_view(node.id),
                     failover, session.get(NodeBmc, node.id), session.get(XapiPool, node.id))


def storage_view(node_id: str) -> HeartbeatView | None:
    """The node's storage heartbeat as this process last read it (None without Ceph)."""
    watch = region().storage_watch
    return watch.view(node_id) if watch is not None else None


@api.route("POST", "/<ref>/clear-fence", access=Region(Perm.NODES_WRITE),
           summary="Let a node that fenced itself start VMs again", responses={200: schemas.Node})
def clear_fence(ref: str) -> Any:
    """Clears the fence the node reports (`self_fenced_at`): its next desired state names it,
    and its agent starts VMs again on the next power action (none is restarted by this).
    Refused (409) when the node reports no fence."""
    session = db()
    node = node_service.find(session, ref)
    node_service.clear_fence(session, actor(), node)
    session.commit()
    usage = scheduler.usage_by_node(session, [node.id]).get(node.id, scheduler.Usage())
    return node_view(node, usage, region().config.node_down_after_s, storage_view(node.id))


@api.route("POST", "/<ref>/maintenance", access=Region(Perm.NODES_WRITE),
           summary="Maintenance on (no new VMs; its VMs are moved away: an operation that "
           "completes once the node is empty) or off", body=schemas.NodeMaintenance,
           responses={202: schemas.Operation, 200: schemas.Node})
def node_maintenance(ref: str, body: schemas.NodeMaintenance) -> Any:
    session = db()
    node = node_service.find(session, ref)
    op = maintenance.set_maintenance(session, actor(), node, body.on)
    session.commit()
    if op is not None:
        return operation_view(op), 202
    return show_node(node.id)


@api.route("DELETE", "/<ref>", access=Region(Perm.NODES_WRITE),
           summary="Remove a node without VMs from the region; its "
           "certificate is refused from then on", responses={204: None})
def remove_node(ref: str) -> Any:
    session = db()
    node = node_service.find(session, ref)
    node_id = node.id
    node_service.remove(session, actor(), node)
    session.commit()
    region().heartbeats.forget([node_id])
    return None, 204


@ops_api.route("GET", "", access=InProject(Level.READ),
           summary="List recent operations", query=schemas.OperationsQuery,
               responses={200: list[schemas.Operation]})
def list_operations(query: schemas.OperationsQuery) -> Any:
    """The operations of the projects you see (the region's own too, for a region role),
    a page at a time, newest first."""
    stmt = tenancy.visible(select(Operation), Operation.project_id)
    if query.target:
        stmt = stmt.where(Operation.target_id == query.target)
    if query.kind:
        stmt = stmt.where(Operation.kind == query.kind)
    if query.state:
        stmt = stmt.where(Operation.state == query.state)
    return page(db(), stmt, Operation.created_at, Operation.id, query.limit, query.cursor,
                newest_first=True, key_type=datetime).map(operation_view)


@ops_api.route("GET", "/<op_id>", access=InProject(Level.READ),
           summary="Show an operation", responses={200: schemas.Operation})
def show_operation(op_id: str) -> Any:
    op = operations.get(db(), op_id)
    if db().scalar(tenancy.visible(select(Operation.id).where(Operation.id == op.id),
                                   Operation.project_id)) is None:
        raise NotFound(f"operation {op_id} does not exist")  # as one that never was
    return operation_view(op)
