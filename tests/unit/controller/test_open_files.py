"""The controller never allows more connections than it may open files for."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import REPO

PROBE = textwrap.dedent("""
    import logging, resource, sys
    from controller.config import ClientLimits
    from controller.serving import limits_within_open_files
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
    hard = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))  # as a capped host does
    limits = limits_within_open_files(ClientLimits(max_connections=int(sys.argv[2])))
    print("max_connections", limits.max_connections)
    print("soft limit", resource.getrlimit(resource.RLIMIT_NOFILE)[0])
""")


def probe(hard: int, wanted: int) -> list[str]:
    # its own process, without the privilege to raise a hard limit: a host that caps it
    out = subprocess.run(["setpriv", "--bounding-set", "-sys_resource", "--inh-caps",
                          "-sys_resource", sys.executable, "-c", PROBE, str(hard), str(wanted)],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def test_more_connections_than_open_files_allow_are_cut_to_fit_with_a_warning() -> None:
    lines = probe(hard=4096, wanted=31000)
    assert lines[-2:] == ["max_connections 3072", "soft limit 4096"]
    assert lines[0] == ("31000 connections are allowed per worker (VAUBAN_MAX_CONNECTIONS "
                        "shared out among VAUBAN_WORKERS) but this process may open only "
                        "4096 files: at most 3072 connections are served at once; raise the "
                        "limit on open files (LimitNOFILE) to serve more")


def test_connections_that_fit_are_kept_and_the_soft_limit_raised_for_them() -> None:
    assert probe(hard=8192, wanted=5000) == ["max_connections 5000", "soft limit 6024"]
