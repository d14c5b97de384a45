"""Settings that carry a secret (the pool's password, the Ceph key) never quote it in a
validation error: such an error ends in the agent's log when the controller and agent
disagree on a field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from agent.protocol import StorageSettings, XapiSettings

POOL: dict[str, Any] = {"url": "u", "username": "r", "password": "s3cret", "pool_uuid": "p",
                        "pins": {}}
CEPH: dict[str, Any] = {"driver": "rbd", "rbd": {
    "mon_host": "10.0.0.1:6789", "user": "vauban", "key": "AQBceph-s3cret==", "pool": "vms",
    "volume_pools": ["volumes"], "secret_usage": "vauban-ceph"}}


# short values: pydantic shortens a long input in the middle, hiding a secret by chance
@pytest.mark.parametrize("model, good, broken", [
    (XapiSettings, POOL, {k: v for k, v in POOL.items() if k != "pool_uuid"}),
    (XapiSettings, POOL, {**POOL, "surprise": True}),
    (StorageSettings, CEPH, {**CEPH, "rbd": {**CEPH["rbd"], "surprise": True}}),
    (StorageSettings, CEPH, {"driver": "rbd", "rbd": {"key": "s3cret"}}),
])
def test_a_settings_error_names_the_field_but_not_the_secret(
        model: type[BaseModel], good: dict[str, Any], broken: dict[str, Any]) -> None:
    model.model_validate_json(json.dumps(good))  # the good form passes
    with pytest.raises(ValidationError) as refused:
        model.model_validate_json(json.dumps(broken))
    said = str(refused.value)
    assert "s3cret" not in said and ("surprise" in said or "required" in said), said
