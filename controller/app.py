"""The Flask application factory."""

from __future__ import annotations

from flask import Flask

from controller.api import (
    account,
    agent,
    audit,
    consoles,
    events,
    fleet,
    gpus,
    ha,
    identity,
    images,
    instances,
    metrics,
    networks,
    nodes,
    security_groups,
    session,
    sessions,
    volumes,
    xcpng,
)
from controller.api.context import install_session_teardown
from controller.api.framework import check_operation_ids
from controller.api.headers import install_security_headers
from controller.api.problems import install_error_handlers
from controller.metrics import ControllerMetrics, install_request_timing
from controller.region import Region
from controller.ui.serve import install_ui

BLUEPRINTS = [session.api, sessions.api, account.api, nodes.api, nodes.ops_api, ha.api,
              audit.api, images.api, instances.api, consoles.api, volumes.api, networks.api,
              networks.ports_api, security_groups.api, gpus.api, agent.api, fleet.api,
              identity.projects_api, identity.users_api, identity.roles_api,
              identity.tokens_api, identity.account_api, events.api, metrics.api, xcpng.api,
              xcpng.node_api]


def create_app(region: Region) -> Flask:
    """An app serving the operator API under /api/v1, the agent API under /agent/v1 and
    the web UI at /."""
    app = Flask("vauban.controller")
    app.extensions["vauban"] = region
    app.extensions["vauban.routes"] = [s for bp in BLUEPRINTS for s in bp.specs]
    measured = ControllerMetrics(region.reads, region.config.node_down_after_s)
    app.extensions["vauban.metrics"] = measured
    measured.process.watch_pool(region.engine)
    region.notifier.on_waiting = measured.process.waiters.set
    install_request_timing(app, measured.process)
    check_operation_ids(app.extensions["vauban.routes"])
    for bp in BLUEPRINTS:
        app.register_blueprint(bp.blueprint)
    app.register_blueprint(consoles.sockets)  # websockets: checked by hand, see the module
    install_error_handlers(app)
    install_session_teardown(app)
    install_security_headers(app)
    install_ui(app)
    return app
