"""/metrics on the controller: who may scrape, the region's state, request latencies."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from controller.region import Region
from tests.functional.helpers import Api


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and sorted labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def api(client: FlaskClient, region: Region) -> Api:
    return Api(client, region)


def test_scraping_needs_a_token_of_a_role_that_reads_metrics(api: Api) -> None:
    assert api.client.get("/metrics").status_code == 401
    viewer = api.as_new_user("viewer", ("project-viewer", "default"))
    assert viewer.get("/metrics").status_code == 403
    auditor = api.as_new_user("watcher", ("auditor", None))
    r = auditor.get("/metrics")
    assert r.status_code == 200 and r.mimetype == "text/plain"


def test_nodes_and_operations_are_counted_from_the_database(api: Api) -> None:
    api.join_node("counted-up")
    api.join_node("counted-new", report=False)
    got = samples(api.get("/metrics").text)
    assert got[("vauban_nodes", (("state", "up"),))] == 1
    assert got[("vauban_nodes", (("state", "new"),))] == 1
    assert got[("vauban_nodes", (("state", "down"),))] == 0


def test_requests_are_timed_by_route_template_not_by_path(api: Api) -> None:
    for name in ("one", "two"):
        assert api.get(f"/api/v1/instances/{name}").status_code == 404
    api.get("/no/such/path/at/all")
    got = samples(api.get("/metrics").text)
    by_template = ("vauban_api_request_duration_seconds_count",
                   (("method", "GET"), ("route", "/api/v1/instances/<ref>"), ("status", "4xx")))
    routes = {dict(labels)["route"] for name, labels in got
              if name == "vauban_api_request_duration_seconds_count"}
    assert not any("one" in r or "two" in r for r in routes), routes
    assert "unmatched" in routes
    assert got[by_template] == 2


def test_long_poll_waiters_are_counted(api: Api, region: Region) -> None:
    with region.notifier.watch("some-node"):
        got = samples(api.get("/metrics").text)
        assert got[("vauban_longpoll_waiters", ())] == 1
    got = samples(api.get("/metrics").text)
    assert got[("vauban_longpoll_waiters", ())] == 0
    assert got[("vauban_db_pool_checked_out", ())] >= 0
