"""Security groups: named sets of allow rules that the nodes apply to the ports in them.

A port in no group is not filtered. A rule allows traffic of a direction, ethertype and
protocol (tcp/udp: a port range) from or to a CIDR, the ports of a group (remote group), or
anywhere. A node is told about every group of its ports and every group their rules name,
with each group's member addresses; so a change to a group's rules or members bumps every
node whose desired state shows that group. Refusals are raised before the caller commits.
"""

from __future__ import annotations

import ipaddress

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controller.db.models import (
    Instance,
    Node,
    Port,
    SecurityGroup,
    SecurityGroupRule,
    port_security_groups,
)
from controller.errors import Conflict, InvalidInput, NotFound
from controller.schemas import SecurityGroupCreate, SecurityRuleCreate
from controller.services import audit, desired, tenancy
from controller.services.nodes import is_xapi_pool

DEFAULT = "default"
DEFAULT_DESCRIPTION = "Allows traffic between its ports, and all outbound traffic"
PORTED = ("tcp", "udp")


def find(db: Session, ref: str) -> SecurityGroup:
    """A group by id or name among the caller's (see tenancy.find), or NotFound."""
    return tenancy.find(db, SecurityGroup, ref, "security group")


def find_input(db: Session, ref: str, project_id: str,
               what: str = "security group") -> SecurityGroup:
    """A group of `project_id` named in a request body: unknown is invalid input (422),
    not 404."""
    return tenancy.find_input(db, SecurityGroup, ref, what, project_id,
                              hint=" (see 'vauban security-group list')")


def ensure_default(db: Session, project_id: str, actor: str = "system") -> SecurityGroup:
    """The project's group 'default', made (once, whoever races) on first use or at
    start."""
    mine = (SecurityGroup.project_id == project_id, SecurityGroup.name == DEFAULT)
    group = db.scalar(select(SecurityGroup).where(*mine))
    if group is not None:
        return group
    try:
        with db.begin_nested():
            group = SecurityGroup(name=DEFAULT, description=DEFAULT_DESCRIPTION,
                                  project_id=project_id)
            db.add(group)
            db.flush()
            group.rules.extend([
                SecurityGroupRule(direction="ingress", ethertype=e, protocol="any",
                                  remote_group_id=group.id) for e in ("ipv4", "ipv6")
            ] + [
                SecurityGroupRule(direction="egress", ethertype=e, protocol="any")
                for e in ("ipv4", "ipv6")
            ])
            db.flush()
    except IntegrityError:
        made = db.scalar(select(SecurityGroup).where(*mine))
        if made is None:
            raise
        return made
    audit.record(db, actor, "security-group.create", f"security-group/{group.id}",
                 name=group.name, rules=[_describe(r) for r in group.rules])
    return group


def resolve(db: Session, refs: list[str] | None, project_id: str) -> list[SecurityGroup]:
    """The groups a new port of `project_id` asks for, of its project: None means
    'default'; unknown ones are refused."""
    if refs is None:
        return [ensure_default(db, project_id)]
    out: list[SecurityGroup] = []
    for ref in refs:
        group = find_input(db, ref, project_id)
        if group not in out:
            out.append(group)
    return out


def port_count(db: Session, group: SecurityGroup) -> int:
    return int(db.scalar(select(func.count()).select_from(port_security_groups).where(
        port_security_groups.c.group_id == group.id)) or 0)


def create(db: Session, actor: str, body: SecurityGroupCreate) -> SecurityGroup:
    project = tenancy.target_project(db, body.project)
    taken = Conflict(f"a security group named '{body.name}' already exists in project "
                     f"'{project.name}'")
    if db.scalar(select(SecurityGroup.id).where(SecurityGroup.project_id == project.id,
                                                SecurityGroup.name == body.name)) is not None:
        raise taken
    group = SecurityGroup(name=body.name, description=body.description,
                          project_id=project.id)
    try:
        with db.begin_nested():
            db.add(group)
            db.flush()
    except IntegrityError:
        raise taken from None
    for rule_body in body.rules:
        rule = _check_rule(db, group, rule_body)
        group.rules.append(rule)
    db.flush()
    audit.record(db, actor, "security-group.create", f"security-group/{group.id}",
                 name=group.name, description=group.description,
                 rules=[_describe(r) for r in group.rules])
    return group


def delete(db: Session, actor: str, group: SecurityGroup) -> None:
    """Delete a group that no port is in and no other group's rule names."""
    if group.name == DEFAULT:
        raise Conflict("the security group 'default' cannot be deleted; it is given to new "
                       "ports that name no group")
    ports = list(db.scalars(select(Port).join(
        port_security_groups, port_security_groups.c.port_id == Port.id).where(
        port_security_groups.c.group_id == group.id).order_by(Port.created_at, Port.id)))
    users = sorted(set(db.scalars(select(SecurityGroup.name).join(
        SecurityGroupRule, SecurityGroupRule.group_id == SecurityGroup.id).where(
        SecurityGroupRule.remote_group_id == group.id, SecurityGroup.id != group.id))))
    reasons = []
    if ports:
        named = [f"{p.id} (VM '{p.instance.name}')" if p.instance else p.id for p in ports]
        reasons.append(f"{len(ports)} port(s) are in it: {', '.join(named)}")
    if users:
        reasons.append("rules of security group(s) "
                       f"{', '.join(repr(u) for u in users)} name it as remote group")
    if reasons:
        raise Conflict(f"security group '{group.name}' is in use: {'; '.join(reasons)}")
    audit.record(db, actor, "security-group.delete", f"security-group/{group.id}",
                 name=group.name)
    db.delete(group)
    db.flush()


def add_rule(db: Session, actor: str, group: SecurityGroup,
             body: SecurityRuleCreate) -> SecurityGroupRule:
    rule = _check_rule(db, group, body)
    group.rules.append(rule)
    db.flush()
    audit.record(db, actor, "security-group.rule-add", f"security-group/{group.id}",
                 name=group.name, rule_id=rule.id, rule=_describe(rule))
    bump_viewers(db, [group.id])
    return rule


def delete_rule(db: Session, actor: str, group: SecurityGroup, rule_id: str) -> None:
    rule = db.get(SecurityGroupRule, rule_id)
    if rule is None or rule.group_id != group.id:
        raise NotFound(f"security group '{group.name}' has no rule '{rule_id}'")
    audit.record(db, actor, "security-group.rule-delete", f"security-group/{group.id}",
                 name=group.name, rule_id=rule.id, rule=_describe(rule))
    group.rules.remove(rule)
    db.flush()
    bump_viewers(db, [group.id])


def set_port_groups(db: Session, actor: str, port: Port, refs: list[str]) -> None:
    """Replace a port's groups; the old and new groups' viewers learn of it. Conflict
    (nothing changed) for groups on a port of a VM in an XCP-ng pool: its agent filters
    no traffic, so the groups would be shown but never applied."""
    groups = resolve(db, refs, port.project_id)
    node = port.instance.node if port.instance is not None else None
    if groups and node is not None and is_xapi_pool(node):
        raise Conflict(f"port {port.id} is on a VM in XCP-ng pool {node.name}: its agent "
                       "filters no traffic, so the port cannot have security groups")
    before = {g.id for g in port.security_groups}
    port.security_groups = groups
    db.flush()
    audit.record(db, actor, "port.security-groups", f"port/{port.id}",
                 groups=[g.name for g in groups])
    changed = before ^ {g.id for g in groups}
    bump_viewers(db, sorted(changed))
    if port.instance is not None and not port.instance.deleting:
        desired.bump(port.instance.node)  # its own node re-applies, groups changed or not


def _check_rule(db: Session, group: SecurityGroup, body: SecurityRuleCreate) -> SecurityGroupRule:
    """A new rule of the group (not added), refused if invalid or a duplicate."""
    port_min, port_max = body.port_min, body.port_max
    if port_min is not None or port_max is not None:
        if body.protocol not in PORTED:
            raise InvalidInput(f"port_min and port_max are for tcp and udp rules only, not "
                               f"protocol '{body.protocol}'")
        if port_min is None:
            raise InvalidInput("port_max needs port_min (for a single port give port_min only)")
        if port_max is None:
            port_max = port_min
        if port_min > port_max:
            raise InvalidInput(f"port_min {port_min} is greater than port_max {port_max}")
    cidr = None
    if body.remote_cidr is not None:
        if body.remote_group is not None:
            raise InvalidInput("give remote_cidr or remote_group, not both")
        cidr = _check_cidr(body.remote_cidr, body.ethertype)
    remote_id = None
    if body.remote_group is not None:
        remote_id = group.id if body.remote_group in (group.id, group.name) else \
            find_input(db, body.remote_group, group.project_id, "remote group").id
    rule = SecurityGroupRule(direction=body.direction, ethertype=body.ethertype,
                             protocol=body.protocol, port_min=port_min, port_max=port_max,
                             remote_cidr=cidr, remote_group_id=remote_id)
    key = _key(rule)
    if any(_key(r) == key for r in group.rules):
        raise Conflict(f"security group '{group.name}' already has this rule "
                       f"({_describe(rule)})")
    return rule


def _check_cidr(text: str, ethertype: str) -> str:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise InvalidInput(f"remote_cidr '{text}' is not an IPv4 or IPv6 network: {e}") \
                from e
        raise InvalidInput(f"remote_cidr '{text}' has host bits set; the network is "
                           f"{loose}") from e
    version = 4 if ethertype == "ipv4" else 6
    if net.version != version:
        raise InvalidInput(f"remote_cidr {net} is an IPv{net.version} network but the rule's "
                           f"ethertype is {ethertype}")
    return str(net)


def _key(r: SecurityGroupRule) -> tuple[object, ...]:
    return (r.direction, r.ethertype, r.protocol, r.port_min, r.port_max, r.remote_cidr,
            r.remote_group_id)


def _describe(r: SecurityGroupRule) -> str:
    text = f"{r.direction} {r.ethertype} {r.protocol}"
    if r.port_min is not None:
        text += f" {r.port_min}" + (f"-{r.port_max}" if r.port_max != r.port_min else "")
    if r.remote_cidr:
        text += f" {'from' if r.direction == 'ingress' else 'to'} {r.remote_cidr}"
    elif r.remote_group_id:
        text += f" {'from' if r.direction == 'ingress' else 'to'} group {r.remote_group_id}"
    return text


def viewers(db: Session, group_ids: list[str]) -> set[str]:
    """Ids of the nodes whose desired state shows any of these groups: a live VM of theirs
    has a port in one of them, or in a group whose rules name one of them."""
    if not group_ids:
        return set()
    referrers = select(SecurityGroupRule.group_id).where(
        SecurityGroupRule.remote_group_id.in_(group_ids))
    return set(db.scalars(
        select(Instance.node_id).join(Port, Port.instance_id == Instance.id)
        .join(port_security_groups, port_security_groups.c.port_id == Port.id)
        .where(Instance.deleting.is_(False),
               or_(port_security_groups.c.group_id.in_(group_ids),
                   port_security_groups.c.group_id.in_(referrers))).distinct()))


def bump_viewers(db: Session, group_ids: list[str], exclude_node_id: str | None = None) -> None:
    db.flush()
    for node_id in sorted(viewers(db, group_ids) - {exclude_node_id}):
        node = db.get(Node, node_id)
        if node is not None:
            desired.bump(node)


def port_group_ids(db: Session, port_ids: list[str]) -> list[str]:
    if not port_ids:
        return []
    return sorted(set(db.scalars(select(port_security_groups.c.group_id).where(
        port_security_groups.c.port_id.in_(port_ids)))))
