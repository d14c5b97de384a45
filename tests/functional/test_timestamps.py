"""Every timestamp the API returns carries its time zone, whatever the database hands back."""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from agent.protocol import ObservedVm, ObservedVmState, utc_time
from controller.app import BLUEPRINTS, create_app
from controller.region import Region
from tests.functional.helpers import RAW_IMAGE, Api, admin_code


def timestamps(doc: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(where, value) of every `at` and `*_at` key in a JSON document."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key == "at" or key.endswith("_at"):
                yield f"{path}.{key}", value
            yield from timestamps(value, f"{path}.{key}")
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            yield from timestamps(item, f"{path}[{i}]")


def test_every_timestamp_in_responses_has_a_time_zone(rbd_region: Region) -> None:
    api = Api(create_app(rbd_region).test_client(), rbd_region)
    node = api.join_node("n1")
    assert api.import_image("tiny", RAW_IMAGE).status_code == 201
    created = api.post("/api/v1/instances", json={"name": "vm", "image": "tiny", "vcpus": 1,
                                                  "memory_mib": 128})
    assert created.status_code == 202, created.json
    vm_id = api.get("/api/v1/instances/vm").json["id"]
    api.report(node, [ObservedVm(id=vm_id, name="vm", state=ObservedVmState.RUNNING,
                                 power_seq=0)], applied=api.desired(node)["generation"])
    assert api.post("/api/v1/volumes", json={"name": "data", "size_gib": 1}).status_code == 202
    assert api.post("/api/v1/networks", json={
        "name": "lan", "kind": "tenant", "subnets": [{"cidr": "10.0.0.0/24"}]}).status_code == 201
    assert api.post("/api/v1/ports", json={"network": "lan"}).status_code == 201
    assert api.post("/api/v1/security-groups", json={
        "name": "web", "rules": [{"direction": "ingress"}]}).status_code == 201
    password = rbd_region.config.admin_password_file.read_text().strip()
    answers = {
        # a second login within the same 30 s: the code of the next step (clocks drift)
        "token": api.client.post("/api/v1/tokens", json={
            "username": "admin", "password": password,
            "totp": admin_code(rbd_region, datetime.now(UTC) + timedelta(seconds=30))}),
        "join token": api.post("/api/v1/join-tokens", json={}),
        "instance create": created,
    }
    for path in ["/join-tokens", "/nodes", "/nodes/n1", "/images", "/images/tiny",
                 "/instances", "/instances/vm", "/volumes", "/volumes/data", "/operations",
                 f"/operations/{created.json['id']}", "/audit-events", "/networks",
                 "/networks/lan", "/ports", "/security-groups", "/security-groups/web"]:
        answers[path] = api.get("/api/v1" + path)
    for what, r in answers.items():
        assert r.status_code in (200, 201, 202), (what, r.json)
        found = list(timestamps(r.json))
        assert found, f"{what} has no timestamp"
        naive = [(where, v) for where, v in found
                 if v is not None and not (v.endswith("Z") or v.endswith("+00:00"))]
        assert naive == [], what
        # at least one timestamp was set (not all null) and it parses back as UTC
        set_values = [v for _, v in found if v is not None]
        assert datetime.fromisoformat(set_values[0]).utcoffset() is not None


def _datetime_fields(model: type[BaseModel], seen: set[type]) -> Iterator[tuple[str, Any]]:
    """(model.field, annotation) of every datetime, also in nested models and lists of them."""
    if model in seen:
        return
    seen.add(model)
    for name, field in model.model_fields.items():
        stack: list[Any] = [typing.Annotated[(field.annotation, *field.metadata)]
                            if field.metadata else field.annotation]
        while stack:
            t = stack.pop()
            if t is datetime or typing.get_origin(t) is typing.Annotated \
                    and typing.get_args(t)[0] is datetime:
                yield f"{model.__name__}.{name}", t
            elif isinstance(t, type) and issubclass(t, BaseModel):
                yield from _datetime_fields(t, seen)
            elif typing.get_origin(t) in (typing.Union, types.UnionType, list, dict):
                stack.extend(typing.get_args(t))


def test_every_response_model_declares_utc_timestamps() -> None:
    """A new response model with a bare `datetime` would answer naive times from SQLite."""
    models = set()
    for spec in (s for bp in BLUEPRINTS for s in bp.specs):
        for r in spec.responses.values():
            inner = typing.get_args(r)[0] if typing.get_args(r) else r
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                models.add(inner)
    seen: set[type] = set()
    fields = [f for m in sorted(models, key=lambda m: m.__name__)
              for f in _datetime_fields(m, seen)]
    assert len(fields) > 20
    bare = [where for where, t in fields
            if not any(getattr(meta, "func", None) is utc_time for meta in typing.get_args(t)[1:])]
    assert bare == []
