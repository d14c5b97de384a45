"""/api/v1/nodes and /api/v1/operations: the region's servers and its long actions."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from controller import schemas
from controller.api.context import db, region
from controller.api.framework import ApiBlueprint, actor
from controller.api.views import node_view, operation_view
from controller.authz import InProject, Level, Perm, Region
from controller.db.models import Node, Operation
from controller.errors import NotFound
from controller.services import nodes as node_service
from controller.services import operations, scheduler, tenancy

api = ApiBlueprint("nodes", "/api/v1/nodes", "nodes")
ops_api = ApiBlueprint("operations", "/api/v1/operations", "operations")


@api.route("GET", "", access=Region(Perm.REGION_READ),
           summary="List nodes", responses={200: list[schemas.Node]})
def list_nodes() -> Any:
    session = db()
    usage = scheduler.usage_by_node(session)
    down = region().config.node_down_after_s
    return [
        node_view(n, usage.get(n.id, scheduler.Usage()), down)
        for n in session.scalars(select(Node).order_by(Node.name))
    ]


@api.route("GET", "/<ref>", access=Region(Perm.REGION_READ),
           summary="Show a node (by name or id)", responses={200: schemas.Node})
def show_node(ref: str) -> Any:
    session = db()
    node = node_service.find(session, ref)
    usage = scheduler.usage_by_node(session, [node.id]).get(node.id, scheduler.Usage())
    return node_view(node, usage, region().config.node_down_after_s)


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
    stmt = tenancy.visible(select(Operation), Operation.project_id) \
        .order_by(Operation.created_at.desc()).limit(query.limit)
    if query.target:
        stmt = stmt.where(Operation.target_id == query.target)
    return [operation_view(o) for o in db().scalars(stmt)]


@ops_api.route("GET", "/<op_id>", access=InProject(Level.READ),
           summary="Show an operation", responses={200: schemas.Operation})
def show_operation(op_id: str) -> Any:
    op = operations.get(db(), op_id)
    if db().scalar(tenancy.visible(select(Operation.id).where(Operation.id == op.id),
                                   Operation.project_id)) is None:
        raise NotFound(f"operation {op_id} does not exist")  # as one that never was
    return operation_view(op)
