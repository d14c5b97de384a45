"""One appliance ISO for the session, built from this checkout (base from the shared cache)."""

from __future__ import annotations

from pathlib import Path

import pytest

from iso import build
from lab import release


@pytest.fixture(scope="session")
def wheels_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout's release archive, as `make dist` makes it."""
    return release.build_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="session")
def built_iso(wheels_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> build.Result:
    """The ISO of this checkout, built now (only the Debian base comes from the cache)."""
    out = tmp_path_factory.mktemp("iso")
    return build.build(out, wheels_tar, log=out / "build.log", reuse=False)
