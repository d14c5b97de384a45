"""A throwaway PostgreSQL server from Debian's packages, on a Unix socket only, for tests."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _bindir() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not versions:
        raise RuntimeError("PostgreSQL server binaries missing: apt-get install postgresql")
    return versions[-1].parent


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield a SQLAlchemy URL to a fresh database; the server (by its PID file) and its
    directory are removed afterwards. Listens on no TCP address, only a private socket."""
    bindir = _bindir()
    user = pwd.getpwnam("postgres")
    root = Path(tempfile.mkdtemp(prefix="vauban-pg-"))
    os.chown(root, user.pw_uid, user.pw_gid)
    data, sock = root / "data", root
    as_pg = ["runuser", "-u", "postgres", "--"]
    try:
        subprocess.run([*as_pg, str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                        "--auth=trust", "-E", "UTF8"], check=True, capture_output=True)
        subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l",
                        str(root / "log"), "-o", f"-c listen_addresses='' -k {sock} -p 5432",
                        "start"], check=True, capture_output=True)
        subprocess.run([*as_pg, str(bindir / "createdb"), "-h", str(sock), "-p", "5432",
                        "vauban"], check=True, capture_output=True)
        yield f"postgresql+psycopg://postgres@/vauban?host={sock}&port=5432"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                            "stop"], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
