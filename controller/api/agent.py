"""/agent/v1: what agents call over mutual TLS. A node reads and writes only its own state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Response, g, request
from sqlalchemy import select

from agent.protocol import (
    POLL_WAIT_HEADER,
    PROTOCOL_HEADER,
    PROTOCOL_MISMATCH,
    PROTOCOL_VERSION,
    REPORT_INTERVAL_HEADER,
    CertificateIssued,
    CertificateRenewal,
    ConsoleRequests,
    DesiredState,
    HypervisorCertificateIssued,
    HypervisorCertificateRequest,
    NodeStatus,
    StorageSettings,
    XapiSettings,
    protocol_from_header,
)
from controller import schemas
from controller.api.auth import require_node
from controller.api.context import db, region
from controller.api.framework import MIB, ApiBlueprint
from controller.api.problems import problem
from controller.db.models import Node
from controller.services import consoles, desired, heartbeats, observed, xcpng
from controller.services import images as image_service
from controller.services import nodes as node_service

api = ApiBlueprint("agent", "/agent/v1", "agent")


def protocol_refusal() -> Response | None:
    """None when the calling agent speaks this controller's wire protocol, else the problem
    document to answer with: 400 for a header that is not a version, 409 for another version
    (the detail names both and which side to upgrade)."""
    raw = request.headers.get(PROTOCOL_HEADER)
    spoken = protocol_from_header(raw)
    if spoken is None:
        return problem(400, "Bad request", f"header {PROTOCOL_HEADER} must be a protocol "
                       f"version (a positive integer), not {(raw or '')[:40]!r}", "bad-request")
    if spoken == PROTOCOL_VERSION:
        return None
    fix = "upgrade the agent" if spoken < PROTOCOL_VERSION else "upgrade the controller"
    return problem(409, "Protocol version mismatch",
                   f"agent speaks protocol {spoken}, this controller speaks {PROTOCOL_VERSION}; "
                   f"{fix}", PROTOCOL_MISMATCH, agent_protocol=spoken,
                   controller_protocol=PROTOCOL_VERSION)


@api.blueprint.before_request
def _check_protocol() -> Response | None:
    return protocol_refusal()  # before anything is read or written for the agent


@api.blueprint.after_request
def _tell_protocol(response: Response) -> Response:
    response.headers[PROTOCOL_HEADER] = str(PROTOCOL_VERSION)
    pace = region().pace
    response.headers[REPORT_INTERVAL_HEADER] = f"{pace.report_interval_s:.1f}"
    response.headers[POLL_WAIT_HEADER] = f"{pace.poll_wait_s:.1f}"
    return response


@api.route("GET", "/nodes/<node_id>/desired", auth="node", query=schemas.AgentDesiredQuery,
           summary="Long-poll the node's desired state once its generation exceeds `after`",
           responses={200: DesiredState, 204: "The wait ended with no newer generation"},
           operation_id="pollDesiredState")
def get_desired(node_id: str, query: schemas.AgentDesiredQuery) -> Any:
    require_node(node_id)
    the_region = region()
    the_region.heartbeats.heard(node_id, datetime.now(UTC))  # a long-poll proves it alive
    session = db()  # a read session: waiting holds no lock and no snapshot

    def generation() -> int:
        return session.scalar(select(Node.generation).where(Node.id == node_id)) or 0

    with the_region.notifier.watch(node_id) as changed:
        session.rollback()  # watching now: read afresh, a change from here on wakes us
        if generation() <= query.after:
            session.rollback()
            changed.wait(the_region.pace.capped_wait(query.wait))
            session.rollback()
            if generation() <= query.after:
                return "", 204  # nothing new: no desired state built for nothing
    session.rollback()
    node = session.get(Node, node_id)
    if node is None:  # removed while it waited
        raise node_service.refusal_of_unknown(session, node_id)
    return desired.build(session, node)


@api.route("GET", "/nodes/<node_id>/consoles", auth="node", query=schemas.AgentConsolesQuery,
           summary="Long-poll the consoles users wait for on this node's VMs: the agent "
                   "dials back to /agent/v1/nodes/<id>/consoles/<console id> for each",
           responses={200: ConsoleRequests}, operation_id="pollConsoleRequests")
def get_consoles(node_id: str, query: schemas.AgentConsolesQuery) -> Any:
    require_node(node_id)
    the_region = region()
    # registered before the read: a console asked for from here on wakes this wait
    with the_region.notifier.watch(consoles.wake_key(node_id)) as asked:
        with the_region.reads() as read:
            waiting = consoles.waiting_for(read, node_id)
        if not waiting:
            asked.wait(the_region.pace.capped_wait(query.wait))
            with the_region.reads() as read:
                waiting = consoles.waiting_for(read, node_id)
    if not waiting:  # no write (nor SQLite's write lock) for an empty answer
        return ConsoleRequests(requests=[])
    with the_region.sessions() as session, session.begin():
        requests = consoles.dispatch(session, node_id)
    return ConsoleRequests(requests=requests)


@api.route("GET", "/nodes/<node_id>/storage", auth="node",
           summary="The region's storage backend and how to reach it (keys included)",
           responses={200: StorageSettings}, operation_id="getNodeStorage")
def get_storage(node_id: str) -> Any:
    require_node(node_id)
    xcpng.refuse_kvm_agent(db(), node_id)  # only KVM agents ask: a pool's asks /xapi
    return region().storage


@api.route("GET", "/nodes/<node_id>/xapi", auth="node",
           summary="How an XCP-ng pool's agent reaches its pool (password included)",
           responses={200: XapiSettings}, operation_id="getNodeXapi")
def get_xapi(node_id: str) -> Any:
    require_node(node_id)
    return XapiSettings(**xcpng.agent_settings(db(), region().region_key, node_id))


@api.route("POST", "/nodes/<node_id>/status", auth="node", body=NodeStatus,
           summary="Report inventory and observed VM state", responses={204: None},
           max_body=16 * MIB, operation_id="reportNodeStatus")  # inventory and thousands of VMs
def post_status(node_id: str, body: NodeStatus) -> Any:
    require_node(node_id)
    book, now = region().heartbeats, datetime.now(UTC)
    report = heartbeats.digest(body)
    if book.is_repeat(node_id, report, now):
        book.heard(node_id, now)  # nothing new: only the time it was heard is written, batched
        return "", 204
    session = db()
    node = session.get(Node, node_id)
    if node is None:  # removed since its certificate was checked
        raise node_service.refusal_of_unknown(session, node_id)
    observed.ingest(session, node, body)
    book.ingested(node_id, report, now)  # before the commit, whose own bump forgets it
    try:
        session.commit()  # wakes the node's long-poll if its desired state changed
    except BaseException:
        book.forget([node_id])
        raise
    return "", 204


@api.route("POST", "/nodes/<node_id>/certificate", auth="node", body=CertificateRenewal,
           summary="Renew the node's client certificate: a CSR for a new key, CN = node id",
           responses={201: CertificateIssued})
def renew_certificate(node_id: str, body: CertificateRenewal) -> Any:
    require_node(node_id)
    session = db()
    node = session.get(Node, node_id)
    if node is None:  # removed since its certificate was checked
        raise node_service.refusal_of_unknown(session, node_id)
    the_region = region()
    issued = node_service.renew_certificate(
        session, node, g.cert_serial, body.csr_pem, the_region.ca,
        timedelta(seconds=the_region.config.node_cert_lifetime_s))
    session.commit()
    return CertificateIssued(certificate_pem=issued.pem.decode(),
                             expires_at=issued.not_after), 201


@api.route("POST", "/nodes/<node_id>/hypervisor-certificate", auth="node",
           body=HypervisorCertificateRequest,
           summary="Sign one of the node's hypervisor certificates (libvirtd's or QEMU's "
                   "TLS for migrations): a CSR for a key of its own, CN = node id",
           responses={201: HypervisorCertificateIssued},
           operation_id="issueHypervisorCertificate")
def issue_hypervisor_certificate(node_id: str, body: HypervisorCertificateRequest) -> Any:
    require_node(node_id)  # a node's certificate names only that node
    session = db()
    node = session.get(Node, node_id)
    if node is None:  # removed since its certificate was checked
        raise node_service.refusal_of_unknown(session, node_id)
    the_region = region()
    issued = node_service.issue_hypervisor_certificate(
        session, node, body.csr_pem, body.migration_address, the_region.ca,
        timedelta(seconds=the_region.config.node_cert_lifetime_s), body.role)
    session.commit()
    return HypervisorCertificateIssued(certificate_pem=issued.pem.decode(),
                                       expires_at=issued.not_after), 201


@api.route("GET", "/images/<image_id>/file", auth="node", summary="Download an image file",
           responses={200: "The image file"})
def get_image_file(image_id: str) -> Any:
    image = image_service.find(db(), image_id)
    path = image_service.path_of(region().config.image_dir, image.id)
    db().close()
    return Response(
        image_service.read_chunks(path),
        mimetype="application/octet-stream",
        headers={"Content-Length": str(image.size_bytes), "X-Vauban-SHA256": image.sha256},
    )
