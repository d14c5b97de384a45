"""/metrics: the controller's Prometheus metrics (docs/metrics.md).

Scraping needs a bearer token of a user whose role may read metrics (region-admin,
operator, auditor: `metrics.read`): never open to anyone by default. Give Prometheus an
API token of an auditor, say (`authorization: {credentials_file: ...}` in its scrape job).
"""

from __future__ import annotations

from typing import Any

from flask import current_app

from controller.api.framework import ApiBlueprint
from controller.authz import Perm, Region
from controller.metrics import ControllerMetrics

api = ApiBlueprint("metrics", "", "metrics")


@api.route("GET", "/metrics", access=Region(Perm.METRICS_READ),
           summary="Prometheus metrics of the region and of the controller's processes",
           responses={200: "Prometheus text exposition format (docs/metrics.md)"})
def scrape() -> Any:
    metrics: ControllerMetrics = current_app.extensions["vauban.metrics"]
    return metrics.render()
