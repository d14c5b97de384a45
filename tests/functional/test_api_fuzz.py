"""Every operation of the OpenAPI document, fed schemathesis' generated requests (valid
and invalid) with an administrator's token, on SQLite and PostgreSQL: no answer is a 5xx,
none violates the document (status codes, content types, headers, bodies), and a request
that breaks the schema is refused.

Not checked: that every schema-valid request is accepted (JSON Schema calls 26703.0 an
integer; the API's strict validation refuses a float where an integer belongs, on
purpose), nor what depends on state the generator cannot make up (a node to schedule on).
"""

from __future__ import annotations

from typing import Any

import paramiko
import pytest
import schemathesis
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from controller.app import create_app
from controller.region import Region
from tests.functional.helpers import Api
from tests.functional.test_tenancy_isolation import streams

EXAMPLES = 15  # per operation and database: each of ~60 operations takes about a second


def test_no_generated_request_breaks_the_api(client: FlaskClient, region: Region,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*_args: Any, **_kw: Any) -> None:
        raise OSError("this test reaches no network")

    # a generated server to add must never be contacted (only what tests made may be)
    monkeypatch.setattr(paramiko.SSHClient, "connect", no_network)
    token = Api(client, region).headers["Authorization"]
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", create_app(region))
    failed: dict[str, str] = {}
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        if streams(operation.definition.raw):
            continue  # never ends: its bad input is tests/functional/test_events.py's

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def generated(case: schemathesis.Case) -> None:
            case.call_and_validate(headers={"Authorization": token},
                                   excluded_checks=[positive_data_acceptance])

        try:
            generated()
        except Exception as e:  # every operation is tried; all failures are reported
            failed[operation.label] = str(e)[:2000]
    assert operations > 50, "the API document lost its operations"
    assert failed == {}
