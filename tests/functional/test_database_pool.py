"""PostgreSQL's connections all in use: a request waits a bounded time for one, then is
answered 503 with Retry-After (it used to be a 500); once one is free, requests pass."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.app import create_app
from controller.bootstrap import open_region
from controller.config import ControllerConfig
from controller.region import Region
from tests.conftest import _reset_postgres
from tests.functional.helpers import Api


@pytest.fixture
def one_connection(postgres_url: str, tmp_path: Path) -> Iterator[Region]:
    _reset_postgres(postgres_url)
    region = open_region(ControllerConfig(
        data_dir=tmp_path / "c", database_url=postgres_url, database_pool_size=1,
        database_pool_overflow=0, database_pool_wait_s=0.5))
    yield region
    region.engine.dispose()


def test_a_request_finding_no_free_connection_is_answered_503(one_connection: Region) -> None:
    api = Api(create_app(one_connection).test_client(), one_connection)
    held = one_connection.engine.connect()  # another request holds the only connection
    try:
        busy = api.get("/api/v1/images")
    finally:
        held.close()
    assert busy.status_code == 503, busy.json
    assert busy.headers["Retry-After"] == "1"
    assert busy.json["title"] == "Service unavailable"
    assert "connections are all in use" in busy.json["detail"]
    assert api.get("/api/v1/images").status_code == 200


def test_pool_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="database_pool_overflow must be 0 or more"):
        ControllerConfig(data_dir=tmp_path, database_pool_overflow=-1)
    with pytest.raises(ValueError, match="database_pool_wait_s must be a positive number"):
        ControllerConfig(data_dir=tmp_path, database_pool_wait_s=0)
