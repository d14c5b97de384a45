"""/api/v1/xcpng-pools: read an XCP-ng pool over pinned XAPI, and enroll it as a node."""

from __future__ import annotations

from typing import Any

from controller import schemas
from controller.api.context import db, region
from controller.api.framework import ApiBlueprint, actor
from controller.authz import Perm, Region
from controller.services import nodes as node_service
from controller.services import xcpng

api = ApiBlueprint("xcpng-pools", "/api/v1/xcpng-pools", "nodes")
node_api = ApiBlueprint("xcpng-nodes", "/api/v1/nodes", "nodes")


def pool_view(url: str, pool_uuid: str, pool_name: str,
              members: list[dict[str, Any]], master: str | None = None) -> schemas.XcpngPool:
    """A pool as the API shows it: fingerprints as AA:BB:…, never the credentials."""
    return schemas.XcpngPool(
        url=url, pool_uuid=pool_uuid, pool_name=pool_name,
        members=[schemas.XcpngMember(host_uuid=m["host_uuid"], name=m["name"],
                                     address=m["address"],
                                     sha256=xcpng.shown(m["sha256"]),
                                     master=m["host_uuid"] == master) for m in members])


def _probed_view(probed: xcpng.Probed) -> schemas.XcpngPool:
    master = next((m.host_uuid for m in probed.members if m.master), None)
    view = pool_view(probed.url, probed.pool_uuid, probed.pool_name,
                     [m.stored() for m in probed.members], master)
    view.repositories = [schemas.XcpngRepository(uuid=r.uuid, name=r.name, type=r.type,
                                                 default=r.default)
                         for r in probed.repositories]
    return view


@api.route("POST", "/probe", access=Region(Perm.NODES_WRITE), body=schemas.XcpngProbe,
           summary="Read a pool through its master, pinned to the given certificate: the "
           "pool, its hosts and each host's certificate (nothing is changed or kept)",
           responses={200: schemas.XcpngPool})
def probe_pool(body: schemas.XcpngProbe) -> Any:
    return _probed_view(xcpng.probe(body.url, body.username, body.password, body.fingerprint))


@api.route("POST", "", access=Region(Perm.NODES_WRITE), body=schemas.XcpngEnroll,
           summary="Enroll a pool as a node, each member's certificate pinned as confirmed "
           "(the password is sealed)", responses={201: schemas.XcpngEnrolled})
def enroll_pool(body: schemas.XcpngEnroll) -> Any:
    # the pool is read before any database work: a slow pool holds no transaction
    probed = xcpng.probe(body.url, body.username, body.password, body.fingerprint)
    session = db()
    node, secret = xcpng.enroll(session, actor(), region().region_key, probed,
                                name=body.name, username=body.username,
                                password=body.password, confirmed=body.members, sr=body.sr,
                                template=body.template)
    session.commit()
    return schemas.XcpngEnrolled(node_id=node.id, name=node.name,
                                 pool=_probed_view(probed), join_token=secret), 201


def _probe_enrolled(ref: str, fingerprint: str | None) -> tuple[Any, xcpng.Probed]:
    """(the pool's node, the pool as it answers now with its stored credentials). The
    read transaction ends before the pool is called: a slow pool holds none."""
    session = db()
    node = node_service.find(session, ref)
    url, username, password, pin = xcpng.credentials(session, region().region_key, node)
    if fingerprint is not None:  # the stored password goes to a host trusted on this word
        xcpng.record_new_pin_probe(session, actor(), node, fingerprint, pin)
    session.commit()
    return node, xcpng.probe(url, username, password, fingerprint or pin)


@node_api.route("POST", "/<ref>/xcpng/probe", access=Region(Perm.NODES_WRITE),
                body=schemas.XcpngRepinProbe,
                summary="Read an enrolled pool again (members and the certificates they "
                "present now), to re-pin after a planned certificate change",
                responses={200: schemas.XcpngPool})
def probe_enrolled_pool(ref: str, body: schemas.XcpngRepinProbe) -> Any:
    return _probed_view(_probe_enrolled(ref, body.fingerprint)[1])


@node_api.route("PUT", "/<ref>/xcpng/members", access=Region(Perm.NODES_WRITE),
                body=schemas.XcpngRepin,
                summary="Pin the pool members' certificates as the pool shows them now and "
                "as confirmed (its agent takes the new pins when the old are refused)",
                responses={200: schemas.XcpngPool})
def repin_pool(ref: str, body: schemas.XcpngRepin) -> Any:
    node, probed = _probe_enrolled(ref, body.fingerprint)
    session = db()
    xcpng.repin(session, actor(), node, probed, body.members)
    session.commit()
    return _probed_view(probed)


@node_api.route("POST", "/<ref>/xcpng/join-token", access=Region(Perm.NODES_WRITE),
                summary="A new one-time token for an agent to join the pool's node again "
                "(e.g. on a rebuilt host); earlier unused ones are revoked",
                responses={201: schemas.XcpngJoinToken})
def new_pool_join_token(ref: str) -> Any:
    session = db()
    node = node_service.find(session, ref)
    secret = xcpng.new_join_token(session, actor(), node)
    session.commit()
    return schemas.XcpngJoinToken(node_id=node.id, name=node.name, join_token=secret), 201
