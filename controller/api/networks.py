"""/api/v1/networks and /api/v1/ports: provider and tenant networks, subnets, ports."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from controller import schemas
from controller.api.context import db, region
from controller.api.framework import ApiBlueprint, actor
from controller.api.paging import in_project, page
from controller.api.views import network_view, port_view
from controller.authz import AnyOf, InProject, Level, Perm, Region
from controller.db.models import Network, Port
from controller.queries import NetworksQuery, PortsQuery
from controller.services import networks as service
from controller.services import security_groups as secgroups
from controller.services import tenancy

# a provider network is the operator's; a tenant network its project's
PROVIDER_OR_MEMBER = AnyOf(Region(Perm.NETWORKS_PROVIDER), InProject(Level.WRITE))
api = ApiBlueprint("networks", "/api/v1/networks", "networks")
ports_api = ApiBlueprint("ports", "/api/v1/ports", "networks")


def _commit() -> None:
    db().commit()


@api.route("GET", "", access=InProject(Level.READ), query=NetworksQuery,
           summary="List networks, by name", responses={200: list[schemas.Network]})
def list_networks(query: NetworksQuery) -> Any:
    """The provider networks and those of the projects you see, a page at a time."""
    session = db()
    stmt = in_project(session, tenancy.visible(select(Network), Network.project_id,
                                               shared=True), Network.project_id, query.project)
    if query.name is not None:
        stmt = stmt.where(Network.name == query.name)
    return page(session, stmt, Network.name, Network.id, query.limit, query.cursor) \
        .map(lambda n: network_view(session, n))


@api.route("GET", "/<ref>", access=InProject(Level.READ),
           summary="Show a network (by name or id)",
           responses={200: schemas.Network})
def show_network(ref: str) -> Any:
    return network_view(db(), service.find(db(), ref))


@api.route("POST", "", access=PROVIDER_OR_MEMBER,
           summary="Create a network (provider VLAN or tenant VXLAN)",
           body=schemas.NetworkCreate, responses={201: schemas.Network})
def create_network(body: schemas.NetworkCreate) -> Any:
    config = region().config
    net = service.create(db(), actor(), body, (config.vni_first, config.vni_last))
    _commit()
    return network_view(db(), net), 201


@api.route("DELETE", "/<ref>", access=PROVIDER_OR_MEMBER,
           summary="Delete a network without ports, and its subnets",
           responses={204: None})
def delete_network(ref: str) -> Any:
    service.delete(db(), actor(), service.find(db(), ref))
    _commit()
    return None, 204


@api.route("POST", "/<ref>/subnets", access=PROVIDER_OR_MEMBER,
           summary="Add a subnet to a network",
           body=schemas.SubnetCreate, responses={201: schemas.Network})
def add_subnet(ref: str, body: schemas.SubnetCreate) -> Any:
    net = service.find(db(), ref)
    service.add_subnet(db(), actor(), net, body)
    _commit()
    return network_view(db(), net), 201


@ports_api.route("GET", "", access=InProject(Level.READ), query=PortsQuery,
                 summary="List ports, oldest first", responses={200: list[schemas.Port]})
def list_ports(query: PortsQuery) -> Any:
    """The ports of the projects you see, a page at a time, in the order they were made."""
    session = db()
    stmt = in_project(session, tenancy.visible(select(Port), Port.project_id),
                      Port.project_id, query.project)
    if query.network is not None:
        stmt = stmt.where(Port.network_id == service.find(session, query.network).id)
    return page(session, stmt, Port.created_at, Port.id, query.limit, query.cursor,
                key_type=datetime).map(port_view)


@ports_api.route("POST", "", access=InProject(Level.WRITE),
                 summary="Create a port (reserve addresses on a network)",
                 body=schemas.PortCreate, responses={201: schemas.Port})
def create_port(body: schemas.PortCreate) -> Any:
    session = db()
    project = tenancy.target_project(session, body.project)
    net = tenancy.find_input(session, Network, body.network, "network", project.id,
                             shared=True)
    groups = secgroups.resolve(session, body.security_groups, project.id)
    port = service.create_port(session, actor(), net, body.fixed_ips, groups=groups,
                               project_id=project.id)
    _commit()
    return port_view(port), 201


@ports_api.route("DELETE", "/<ref>", access=InProject(Level.WRITE),
                 summary="Delete a port that no VM has",
                 responses={204: None})
def delete_port(ref: str) -> Any:
    service.delete_port(db(), actor(), service.find_port(db(), ref))
    _commit()
    return None, 204


@ports_api.route("PUT", "/<ref>/security-groups", access=InProject(Level.WRITE),
                 summary="Set the security groups of a port",
                 body=schemas.PortSecurityGroups, responses={200: schemas.Port})
def set_port_security_groups(ref: str, body: schemas.PortSecurityGroups) -> Any:
    session = db()
    port = service.find_port(session, ref)
    secgroups.set_port_groups(session, actor(), port, body.groups)
    _commit()
    return port_view(port)
