"""Region-level endpoints: log in, status, join tokens, joining, the CA and the API document."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Response, current_app, request
from sqlalchemy import func, select

from agent.protocol import JoinRequest, JoinResponse
from controller import __version__, schemas
from controller.api.agent import protocol_refusal
from controller.api.context import db, region
from controller.api.framework import ApiBlueprint, actor, openapi_document
from controller.api.paging import page
from controller.authz import Perm, Region
from controller.db.models import Image, Instance, JoinToken, Node, Operation
from controller.schemas import PageQuery
from controller.services import audit, login
from controller.services import nodes as node_service

api = ApiBlueprint("region", "/api/v1", "region")


@api.route("POST", "/tokens", summary="Log in: get a bearer token", auth="public",
           body=schemas.TokenCreate, responses={201: schemas.Token}, operation_id="logIn")
def create_token(body: schemas.TokenCreate) -> Any:
    the_region = region()
    token, row = login.log_in(
        the_region.reads, the_region.sessions, the_region.config.login_limits(),
        the_region.login_slots, the_region.region_key, body.username, body.password,
        body.totp, request.remote_addr or "unknown", timedelta(seconds=body.ttl_seconds),
        datetime.now(UTC))
    return schemas.Token(token=token, expires_at=row.expires_at, username=body.username), 201


@api.route("GET", "/status", access=Region(Perm.REGION_READ),
           summary="The region at a glance",
           responses={200: schemas.RegionStatus}, operation_id="getRegionStatus")
def status() -> Any:
    session = db()
    now = datetime.now(UTC)
    heard_since = now - timedelta(seconds=region().config.node_down_after_s)
    count = lambda stmt: int(session.scalar(stmt) or 0)  # noqa: E731
    nodes = count(select(func.count(Node.id)))
    # counted by the database: no row per node crosses into Python on this hot path
    up = count(select(func.count(Node.id)).where(Node.last_seen_at >= heard_since))
    return schemas.RegionStatus(
        version=__version__,
        database=region().engine.dialect.name,
        nodes_up=up,
        nodes_down=nodes - up,
        instances=count(select(func.count(Instance.id))),
        instances_running=count(
            select(func.count(Instance.id)).where(Instance.observed_state == "running")
        ),
        images=count(select(func.count(Image.id))),
        operations_pending=count(
            select(func.count(Operation.id)).where(Operation.state.in_(("pending", "running")))
        ),
        agents_waiting=region().notifier.waiting(),
        ca_sha256=region().ca_sha256,
        storage_driver=region().storage.driver,
        storage=session.scalar(select(Node.storage_status)
                               .where(Node.storage_status.is_not(None))
                               .order_by(Node.last_seen_at.desc()).limit(1)),
    )


@api.route("GET", "/join-tokens", access=Region(Perm.REGION_READ),
           summary="List join tokens, oldest first", query=PageQuery,
           responses={200: list[schemas.JoinToken]})
def list_join_tokens(query: PageQuery) -> Any:
    """The join tokens, used and unused, a page at a time, in the order they were made."""
    return page(db(), select(JoinToken), JoinToken.created_at, JoinToken.id, query.limit,
                query.cursor, key_type=datetime).map(join_token_view)


def join_token_view(row: JoinToken) -> schemas.JoinToken:
    return schemas.JoinToken(
        id=row.id, description=row.description,
        state=node_service.join_token_state(row, datetime.now(UTC)),  # type: ignore[arg-type]
        expires_at=row.expires_at, used_at=row.used_at, used_by_node_id=row.used_by_node_id,
        revoked_at=row.revoked_at, created_by=row.created_by, created_at=row.created_at)


@api.route("POST", "/join-tokens", access=Region(Perm.NODES_WRITE),
           summary="Create a one-time join token for a new node",
           body=schemas.JoinTokenCreate, responses={201: schemas.JoinTokenCreated})
def create_join_token(body: schemas.JoinTokenCreate) -> Any:
    session = db()
    secret, row = node_service.create_join_token(
        session, actor(), body.description, body.ttl_seconds
    )
    session.commit()
    base = join_token_view(row).model_dump()
    return schemas.JoinTokenCreated(**base, token=secret, ca_sha256=region().ca_sha256), 201


@api.route("DELETE", "/join-tokens/<token_id>",
           access=Region(Perm.NODES_WRITE),
           summary="Revoke an unused join token (it stays listed, as revoked)",
           responses={200: schemas.JoinToken})
def revoke_join_token(token_id: str) -> Any:
    session = db()
    row = node_service.revoke_join_token(session, actor(), token_id)
    session.commit()
    return join_token_view(row)


@api.blueprint.before_request
def _join_protocol() -> Response | None:
    """A joining agent of another wire protocol is refused before its body is read."""
    return protocol_refusal() if request.endpoint == "region.join" else None


@api.route("POST", "/join", summary="Join the region: a join token and a CSR for a certificate",
           auth="public", body=JoinRequest, responses={201: JoinResponse}, operation_id="joinNode")
def join(body: JoinRequest) -> Any:
    session = db()
    try:
        response = node_service.join(session, body, region().ca, timedelta(
            seconds=region().config.node_cert_lifetime_s))
        session.commit()
    except Exception as e:
        session.rollback()
        audit.record_now(region().sessions, "anonymous", "node.join", f"node/{body.name}",
                         "refused", error=str(e))
        raise
    return response, 201


@api.route("GET", "/ca.pem", summary="The region CA certificate (verify it by its SHA-256)",
           auth="public", responses={200: "PEM certificate"}, operation_id="getCaCertificate")
def ca_pem() -> Any:
    return Response(region().ca.cert_pem(), mimetype="application/x-pem-file")


@api.route("GET", "/openapi.json", summary="This API, as OpenAPI 3.1", auth="public",
           responses={200: "OpenAPI document"}, operation_id="getOpenapiDocument")
def openapi() -> Any:
    return openapi_document(current_app.extensions["vauban.routes"], __version__)
