"""/api/v1/nodes/<ref>/{bmc,fence,recover,failover}: what operators do for HA."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from controller import schemas
from controller.api.context import db, region
from controller.api.framework import ApiBlueprint, actor
from controller.api.nodes import show_node
from controller.authz import Perm, Region
from controller.db.models import Failover, NodeBmc
from controller.errors import NotFound
from controller.services import ha
from controller.services import nodes as node_service

api = ApiBlueprint("node-ha", "/api/v1/nodes", "nodes")


def _bmc_view(bmc: NodeBmc, power: str | None = None) -> schemas.NodeBmc:
    return schemas.NodeBmc(kind=bmc.kind, address=bmc.address, port=bmc.port,
                           username=bmc.username, power_state=power, updated_at=bmc.updated_at)


@api.route("PUT", "/<ref>/bmc", access=Region(Perm.NODES_WRITE), body=schemas.NodeBmcSet,
           summary="Set how to reach the node's BMC (checked live; the password is sealed)",
           responses={200: schemas.NodeBmc})
def set_bmc(ref: str, body: schemas.NodeBmcSet) -> Any:
    session = db()
    node = node_service.find(session, ref)
    bmc, power = ha.set_bmc(session, actor(), node, region().region_key,
                            address=body.address, port=body.port, username=body.username,
                            password=body.password)
    session.commit()
    return _bmc_view(bmc, power)


@api.route("GET", "/<ref>/bmc", access=Region(Perm.REGION_READ),
           summary="Show the node's BMC settings (never its password)",
           responses={200: schemas.NodeBmc})
def show_bmc(ref: str) -> Any:
    session = db()
    return _bmc_view(ha.get_bmc(session, node_service.find(session, ref)))


@api.route("DELETE", "/<ref>/bmc", access=Region(Perm.NODES_WRITE),
           summary="Forget the node's BMC (its HA VMs then wait for an operator when it is "
           "lost)", responses={204: None})
def unset_bmc(ref: str) -> Any:
    session = db()
    ha.unset_bmc(session, actor(), node_service.find(session, ref))
    session.commit()
    return None, 204


@api.route("GET", "/<ref>/failover", access=Region(Perm.REGION_READ),
           summary="The node's failover under way or last ended",
           responses={200: schemas.Failover})
def show_failover(ref: str) -> Any:
    session = db()
    node = node_service.find(session, ref)
    fo = session.scalars(select(Failover).where(Failover.node_id == node.id)
                         .order_by(Failover.created_at.desc())).first()
    if fo is None:
        raise NotFound(f"node {node.name} has had no failover")
    return schemas.Failover.model_validate(fo)


@api.route("POST", "/<ref>/fence", access=Region(Perm.NODES_WRITE), body=schemas.NodeFence,
           summary="Vouch that a lost node's power is off (its BMC cannot say): its "
           "failover goes on", responses={200: schemas.Failover})
def fence_node(ref: str, body: schemas.NodeFence) -> Any:
    session = db()
    fo = ha.confirm_powered_off(session, actor(), node_service.find(session, ref))
    session.commit()
    return schemas.Failover.model_validate(fo)


@api.route("POST", "/<ref>/recover", access=Region(Perm.NODES_WRITE),
           summary="Take a fenced node back once repaired: its Ceph blocklist entry is "
           "lifted and it takes VMs again", responses={200: schemas.Node})
def recover_node(ref: str) -> Any:
    session = db()
    node = ha.recover(session, actor(), node_service.find(session, ref), region().fencer)
    session.commit()
    return show_node(node.id)
