"""/api/v1/fleet, /api/v1/rollouts, /api/v1/inventory and node labels: the fleet."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Response
from sqlalchemy import select

from controller.api.context import db, region
from controller.api.framework import ApiBlueprint, actor
from controller.api.paging import page
from controller.api.views import node_view
from controller.authz import Perm, Region
from controller.db.models import FleetHost, RolloutJob
from controller.fleet import hosts as fleet_hosts
from controller.fleet import jobs
from controller.fleet import schemas as fs
from controller.fleet.inventory import dynamic_inventory
from controller.fleet.keys import ensure_fleet_key
from controller.queries import FleetHostsQuery, RolloutsQuery
from controller.schemas import Node
from controller.services import scheduler
from hardware.model import QualificationReport

api = ApiBlueprint("fleet", "/api/v1", "fleet")


def _host_view(host: FleetHost) -> fs.FleetHost:
    return fs.FleetHost(
        id=host.id, name=host.name, address=host.address, port=host.port, user=host.user,
        role=host.role, host_key_sha256=fleet_hosts.host_key_sha256(host),
        qualification=QualificationReport.model_validate(host.qualification)
        if host.qualification else None, created_by=host.created_by,
        created_at=host.created_at)


@api.route("GET", "/fleet/ssh-key", access=Region(Perm.FLEET_KEY),
           summary="The controller's fleet SSH public key",
           responses={200: "OpenSSH public key line"}, operation_id="getFleetSshKey")
def fleet_ssh_key() -> Any:
    return Response(ensure_fleet_key(region().config.data_dir) + "\n", mimetype="text/plain")


@api.route("GET", "/fleet/hosts", access=Region(Perm.FLEET_READ),
           summary="List the servers of the fleet",
           query=FleetHostsQuery, responses={200: list[fs.FleetHost]})
def list_fleet_hosts(query: FleetHostsQuery) -> Any:
    """The servers of the fleet, a page at a time, by name."""
    stmt = select(FleetHost)
    if query.name is not None:
        stmt = stmt.where(FleetHost.name == query.name)
    return page(db(), stmt, FleetHost.name, FleetHost.id, query.limit, query.cursor) \
        .map(_host_view)


@api.route("POST", "/fleet/hosts", access=Region(Perm.FLEET_WRITE),
           summary="Add a server over SSH (host key pinned)",
           body=fs.FleetHostCreate, responses={201: fs.FleetHost})
def add_fleet_host(body: fs.FleetHostCreate) -> Any:
    return _host_view(fleet_hosts.add(region(), actor(), body)), 201


@api.route("GET", "/inventory", access=Region(Perm.FLEET_READ),
           summary="The fleet as an Ansible dynamic inventory",
           responses={200: "Ansible inventory JSON (--list)"}, operation_id="getAnsibleInventory")
def inventory() -> Any:
    return dynamic_inventory(db())


@api.route("POST", "/nodes/<ref>/labels", access=Region(Perm.NODES_WRITE),
           summary="Set and remove a node's labels",
           body=fs.NodeLabels, responses={200: Node})
def label_node(ref: str, body: fs.NodeLabels) -> Any:
    session = db()
    node = fleet_hosts.set_labels(session, actor(), ref, body.set, body.remove)
    session.commit()
    usage = scheduler.usage_by_node(session, [node.id]).get(node.id, scheduler.Usage())
    return node_view(node, usage, region().config.node_down_after_s)


@api.route("POST", "/rollouts", access=Region(Perm.FLEET_WRITE),
           summary="Run the site playbook on the fleet (202)",
           body=fs.RolloutCreate, responses={202: fs.Rollout})
def start_rollout(body: fs.RolloutCreate) -> Any:
    session = db()
    config = region().config
    jobs.fail_orphans(session)
    job = jobs.start(session, config, actor(), body.limit, body.tags, body.batch, body.upgrade,
                     body.version)
    session.commit()
    try:
        job.worker_pid = jobs.spawn(config, job.id)
    except OSError as e:
        # a pending job without a worker PID is never found orphaned: it would refuse
        # every later rollout
        jobs.finish(session, job, "failed", f"its worker did not start: {e}")
        session.commit()
        raise
    session.commit()
    return fs.Rollout.model_validate(job), 202


@api.route("GET", "/rollouts", access=Region(Perm.FLEET_READ),
           summary="List rollouts, newest first",
           query=RolloutsQuery, responses={200: list[fs.Rollout]})
def list_rollouts(query: RolloutsQuery) -> Any:
    """The rollouts, a page at a time, newest first."""
    stmt = select(RolloutJob)
    if query.state is not None:
        stmt = stmt.where(RolloutJob.state == query.state)
    return page(db(), stmt, RolloutJob.created_at, RolloutJob.id, query.limit, query.cursor,
                newest_first=True, key_type=datetime).map(fs.Rollout.model_validate)


@api.route("GET", "/rollouts/<job_id>", access=Region(Perm.FLEET_READ),
           summary="Show a rollout and each host's progress",
           responses={200: fs.Rollout})
def show_rollout(job_id: str) -> Any:
    return fs.Rollout.model_validate(jobs.get(db(), job_id))


@api.route("GET", "/rollouts/<job_id>/log", access=Region(Perm.FLEET_READ),
           summary="A rollout's full Ansible output",
           responses={200: "text"}, operation_id="getRolloutLog")
def rollout_log(job_id: str) -> Any:
    job = jobs.get(db(), job_id)
    return Response(jobs.log_text(region().config, job), mimetype="text/plain")
