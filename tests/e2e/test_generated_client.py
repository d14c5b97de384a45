"""A client generated from the controller's OpenAPI document (openapi-python-client)
creates and deletes a VM on a real region: the document is fit for generated clients."""

from __future__ import annotations

import importlib
import json
import os
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.region import BIN, E2ERegion, domain_exists, wait_for

pytestmark = pytest.mark.e2e

OP_TIMEOUT = 300  # a VM made and removed under TCG on a loaded 2-core machine


@pytest.fixture(scope="module")
def region(libvirtd: str, testguest_image: Path) -> Iterator[E2ERegion]:
    with E2ERegion.running(testguest_image) as r:
        yield r


def generate(region: E2ERegion, out: Path) -> Any:
    """The package generated from the region's served document, imported."""
    doc = requests.get(f"{region.layout.url}/api/v1/openapi.json",
                       verify=str(region.layout.ca_file), timeout=60)
    assert doc.status_code == 200
    (out / "openapi.json").write_text(json.dumps(doc.json()))
    # the generator formats its output with ruff: the one of this environment
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path",
         str(out / "openapi.json"), "--meta", "none", "--output-path",
         str(out / "vauban_client")], cwd=out, env=env, capture_output=True, text=True,
        timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    # every schema and response made it into the client
    assert "Unable to" not in done.stdout + done.stderr, done.stdout + done.stderr
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("vauban_client")
    finally:
        sys.path.remove(str(out))


def test_a_generated_client_creates_and_deletes_a_vm(region: E2ERegion,
                                                      tmp_path: Path) -> None:
    generate(region, tmp_path)
    from vauban_client import AuthenticatedClient  # type: ignore[import-not-found]
    from vauban_client.api.instances import (  # type: ignore[import-not-found]
        create_instance,
        delete_instance,
        list_instances,
    )
    from vauban_client.api.operations import show_operation  # type: ignore[import-not-found]
    from vauban_client.models import InstanceCreate, Operation  # type: ignore[import-not-found]

    tls = ssl.create_default_context(cafile=str(region.layout.ca_file))
    name = f"gen-{uuid.uuid4().hex[:6]}"
    with AuthenticatedClient(base_url=region.layout.url, token=region.token,
                             verify_ssl=tls) as client:

        def finished(op_id: str) -> Any:
            op = show_operation.sync(op_id, client=client)
            assert isinstance(op, Operation), op
            return op if op.state.value in ("succeeded", "failed") else None

        made = create_instance.sync(client=client, body=InstanceCreate(
            name=name, image="testguest", vcpus=1, memory_mib=128))
        assert isinstance(made, Operation), made
        vm_id = made.target_id
        region.created_vm_ids.add(vm_id)
        done = wait_for(lambda: finished(made.id), OP_TIMEOUT, f"{name} created")
        assert done.state.value == "succeeded", done.error
        assert domain_exists(vm_id)
        listed = list_instances.sync(client=client, name=name)
        assert [vm.id for vm in listed] == [vm_id]

        gone = delete_instance.sync(name, client=client)
        assert isinstance(gone, Operation), gone
        done = wait_for(lambda: finished(gone.id), OP_TIMEOUT, f"{name} deleted")
        assert done.state.value == "succeeded", done.error
        assert list_instances.sync(client=client, name=name) == []
        assert not domain_exists(vm_id)
