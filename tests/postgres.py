"""A throwaway PostgreSQL server from Debian's packages, on a Unix socket only, for tests."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, make_url, text

# its data is thrown away with it: no flush to disk at each commit (what durability costs
# is no test's subject), which the functional tests' many commits would wait on
THROWAWAY = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
TEMPLATE = "vauban_template"  # the database each test's starts as a copy of
_templates_made: set[str] = set()  # the servers (by URL) whose template is made


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
                        str(root / "log"), "-o",
                        f"-c listen_addresses='' -k {sock} -p 5432 {THROWAWAY}",
                        "start"], check=True, capture_output=True)
        subprocess.run([*as_pg, str(bindir / "createdb"), "-h", str(sock), "-p", "5432",
                        "vauban"], check=True, capture_output=True)
        yield f"postgresql+psycopg://postgres@/vauban?host={sock}&port=5432"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                            "stop"], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def recreate_database(url: str, prepare: Callable[[Engine], None]) -> None:
    """Drop the database at `url` (ending its connections) and make it again as a copy of
    a template made once per server by `prepare` (given an engine on the template)."""
    parsed = make_url(url)
    name = parsed.database
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if url not in _templates_made:
                conn.execute(text(f"DROP DATABASE IF EXISTS {TEMPLATE}"))
                conn.execute(text(f"CREATE DATABASE {TEMPLATE}"))
                template = create_engine(parsed.set(database=TEMPLATE))
                try:
                    prepare(template)
                finally:
                    template.dispose()
                _templates_made.add(url)
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            conn.execute(text(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
    finally:
        admin.dispose()
