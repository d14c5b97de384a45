"""/api/v1/security-groups: security groups and their rules."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from controller import schemas
from controller.api.context import db
from controller.api.framework import ApiBlueprint, actor
from controller.api.paging import in_project, page
from controller.api.views import security_group_view
from controller.authz import InProject, Level
from controller.db.models import SecurityGroup
from controller.queries import SecurityGroupsQuery
from controller.services import security_groups as service
from controller.services import tenancy

api = ApiBlueprint("security_groups", "/api/v1/security-groups", "security groups")


def _commit() -> None:
    db().commit()


@api.route("GET", "", access=InProject(Level.READ), query=SecurityGroupsQuery,
           summary="List security groups, by name",
           responses={200: list[schemas.SecurityGroup]})
def list_security_groups(query: SecurityGroupsQuery) -> Any:
    """The security groups of the projects you see, a page at a time, by name."""
    session = db()
    stmt = in_project(session, tenancy.visible(select(SecurityGroup), SecurityGroup.project_id),
                      SecurityGroup.project_id, query.project)
    if query.name is not None:
        stmt = stmt.where(SecurityGroup.name == query.name)
    return page(session, stmt, SecurityGroup.name, SecurityGroup.id, query.limit,
                query.cursor).map(lambda g: security_group_view(session, g))


@api.route("GET", "/<ref>", access=InProject(Level.READ),
           summary="Show a security group (by name or id)",
           responses={200: schemas.SecurityGroup})
def show_security_group(ref: str) -> Any:
    return security_group_view(db(), service.find(db(), ref))


@api.route("POST", "", access=InProject(Level.WRITE),
           summary="Create a security group, with its first rules",
           body=schemas.SecurityGroupCreate, responses={201: schemas.SecurityGroup})
def create_security_group(body: schemas.SecurityGroupCreate) -> Any:
    group = service.create(db(), actor(), body)
    _commit()
    return security_group_view(db(), group), 201


@api.route("DELETE", "/<ref>", access=InProject(Level.WRITE),
           summary="Delete a security group no port is in and no rule "
           "names", responses={204: None})
def delete_security_group(ref: str) -> Any:
    service.delete(db(), actor(), service.find(db(), ref))
    _commit()
    return None, 204


@api.route("POST", "/<ref>/rules", access=InProject(Level.WRITE),
           summary="Add a rule to a security group",
           body=schemas.SecurityRuleCreate, responses={201: schemas.SecurityGroup},
           operation_id="addSecurityGroupRule")
def add_rule(ref: str, body: schemas.SecurityRuleCreate) -> Any:
    group = service.find(db(), ref)
    service.add_rule(db(), actor(), group, body)
    _commit()
    return security_group_view(db(), group), 201


@api.route("DELETE", "/<ref>/rules/<rule_id>", access=InProject(Level.WRITE),
           summary="Delete a rule of a security group",
           responses={204: None}, operation_id="deleteSecurityGroupRule")
def delete_rule(ref: str, rule_id: str) -> Any:
    service.delete_rule(db(), actor(), service.find(db(), ref), rule_id)
    _commit()
    return None, 204
