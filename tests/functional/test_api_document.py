"""The OpenAPI document is fit for generated clients: valid, every operation named,
summarised and described, every error one typed problem; the reference page renders it
from the controller's own files."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from controller.api.framework import ApiBlueprint, check_operation_ids
from controller.app import BLUEPRINTS
from controller.authz import ANY_USER

METHODS = {"get", "put", "post", "delete", "patch"}


def operations(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{method.upper()} {path}", op) for path, item in doc["paths"].items()
            for method, op in item.items() if method in METHODS]


def test_the_document_passes_the_openapi_validator(client: FlaskClient) -> None:
    validate(client.get("/api/v1/openapi.json").json)


def test_every_operation_has_a_unique_id_a_summary_and_a_description(
        client: FlaskClient) -> None:
    ops = operations(client.get("/api/v1/openapi.json").json)
    assert len(ops) > 80
    missing = [(where, key) for where, op in ops for key in ("operationId", "summary",
                                                              "description")
               if not isinstance(op.get(key), str) or not op[key].strip()]
    assert missing == []
    ids = [op["operationId"] for _, op in ops]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[a-z][A-Za-z0-9]*", i) for i in ids)
    by_id = {op["operationId"]: where for where, op in ops}
    assert by_id["listInstances"] == "GET /api/v1/instances"
    assert by_id["createInstance"] == "POST /api/v1/instances"
    assert by_id["deleteInstance"] == "DELETE /api/v1/instances/{ref}"
    # the description says who may call it
    assert all("Who may call it:" in op["description"] for _, op in ops)


def test_a_clash_of_operation_ids_stops_the_app() -> None:
    specs = [s for bp in BLUEPRINTS for s in bp.specs]
    other = ApiBlueprint("clash", "/api/v1/clash", "clash")

    @other.route("GET", "", access=ANY_USER, summary="Clash", responses={200: "x"},
                 operation_id="listInstances")
    def clash() -> Any:
        return {}

    with pytest.raises(ValueError, match="listInstances"):
        check_operation_ids([*specs, *other.specs])


def test_every_error_response_is_the_one_problem_schema(client: FlaskClient) -> None:
    doc = client.get("/api/v1/openapi.json").json
    problem = doc["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "instance"} <= set(problem["required"])
    assert {"errors", "retry_after_s", "max_bytes", "reasons"} <= set(problem["properties"])
    shared = doc["components"]["responses"]["Problem"]
    assert shared["content"]["application/problem+json"]["schema"] == {
        "$ref": "#/components/schemas/Problem"}
    for where, op in operations(doc):
        errors = {code: r for code, r in op["responses"].items() if code[0] in "45"}
        assert {"4XX", "5XX"} <= set(errors), where
        assert all(r == {"$ref": "#/components/responses/Problem"} for r in errors.values()), \
            where


def test_a_problem_answered_matches_the_schema(client: FlaskClient) -> None:
    r = client.get("/api/v1/instances")
    assert r.status_code == 401 and r.mimetype == "application/problem+json"
    doc = client.get("/api/v1/openapi.json").json
    problem = doc["components"]["schemas"]["Problem"]
    assert set(problem["required"]) <= set(r.json)


def test_component_names_do_not_depend_on_the_module_a_type_is_in(
        client: FlaskClient) -> None:
    # generated clients name their classes by these: a type that shares its name with
    # agent.protocol's is named by the package, whichever of its modules holds it
    components = client.get("/api/v1/openapi.json").json["components"]["schemas"]
    assert "controller__schemas__SecurityRule" in components
    assert not [name for name in components if name.startswith("controller__schemas__")
                and name.count("__") > 2]
    assert {"Instance", "Node", "Volume", "RoleBinding", "Problem"} <= set(components)


def test_every_list_documents_its_page(client: FlaskClient) -> None:
    doc = client.get("/api/v1/openapi.json").json
    lists = [(where, op) for where, op in operations(doc) if op["operationId"].startswith(
        "list")]
    assert len(lists) >= 8
    paged = [(where, op) for where, op in lists
             if any(p["name"] == "cursor" for p in op.get("parameters", []))]
    assert [where for where, _ in lists] == [where for where, _ in paged]  # every list pages
    for where, op in paged:
        params = {p["name"]: p for p in op["parameters"]}
        assert params["limit"]["schema"]["minimum"] == 1, where
        assert params["limit"]["schema"]["maximum"] == 1000, where
        assert params["cursor"]["schema"]["anyOf"][0]["maxLength"] == 512, where
        assert "Link" in op["responses"]["200"]["headers"], where
    names = {op["operationId"] for _, op in paged}
    assert {"listInstances", "listImages", "listVolumes", "listNetworks", "listPorts",
            "listSecurityGroups", "listNodes", "listOperations", "listAuditEvents",
            "listProjects", "listUsers", "listFleetHosts", "listRollouts",
            "listRoleBindings", "listApiTokens", "listGpus", "listJoinTokens"} <= names


def test_the_reference_page_loads_only_local_assets(app: Flask) -> None:
    client = app.test_client()
    page = client.get("/api/v1/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    refs = re.findall(r'(?:src|href|spec-url)="([^"]+)"', html)
    assert "/ui/vendor/redoc/redoc.standalone.js" in refs
    assert "/api/v1/openapi.json" in refs
    assert all(r.startswith("/") and not r.startswith("//") or r.startswith("data:")
               for r in refs), refs
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "worker-src blob:" in csp and "http" not in csp
    for ref in refs:
        if ref.startswith("/"):
            assert client.get(ref).status_code == 200, ref
    bundle = client.get("/ui/vendor/redoc/redoc.standalone.js").get_data(as_text=True)
    assert "sourceMappingURL=http" not in bundle
