"""A release archive of the current checkout, as `make dist` makes it, for the lab.

`vauban-<version>-wheels.tar` holds the vauban wheel and every wheel it needs, the
controller's extra included. The
dependencies' wheels (slow: libvirt-python compiles) are cached outside the checkout by
the hash of the dependency list; the vauban wheel is built fresh from the checkout.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path("/var/cache/vauban/wheelhouse")


def _pip(*args: str, cwd: Path = REPO) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", *args],
                   check=True, cwd=cwd, capture_output=True)


def dependency_wheels(cache: Path = DEFAULT_CACHE) -> Path:
    """The folder of wheels of vauban's dependencies, built once per dependency list."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = sorted([*project["dependencies"], *project["optional-dependencies"]["controller"]])
    digest = hashlib.sha256("\n".join(wanted).encode()).hexdigest()
    folder = cache / digest[:16]
    if (folder / ".complete").exists():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{digest[:16]}.building-", dir=cache))
    try:
        _pip("wheel", "-w", str(work), *wanted)
        (work / ".complete").touch()
        shutil.rmtree(folder, ignore_errors=True)
        work.rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def version(source: Path = REPO) -> str:
    return str(tomllib.loads((source / "pyproject.toml").read_text())["project"]["version"])


def build_release(dest: Path, source: Path = REPO, cache: Path = DEFAULT_CACHE) -> Path:
    """dest/vauban-<version>-wheels.tar of `source` (a checkout) with its dependencies."""
    dest.mkdir(parents=True, exist_ok=True)
    deps = dependency_wheels(cache)
    with tempfile.TemporaryDirectory() as work:
        _pip("wheel", "--no-deps", "--no-build-isolation", "-w", work, str(source),
             cwd=source)
        archive = dest / f"vauban-{version(source)}-wheels.tar"
        tmp = archive.with_suffix(".tmp")
        with tarfile.open(tmp, "w") as tar:
            for wheel in sorted([*Path(work).glob("*.whl"), *deps.glob("*.whl")]):
                tar.add(wheel, arcname=wheel.name)
        os.replace(tmp, archive)
    return archive


def _packages(source: Path = REPO) -> list[str]:
    """The top-level packages the wheel is made of (pyproject's find include, 'agent*')."""
    setuptools = tomllib.loads((source / "pyproject.toml").read_text())["tool"]["setuptools"]
    return [p.rstrip("*") for p in setuptools["packages"]["find"]["include"]]


def build_next_release(dest: Path, work: Path) -> str:
    """dest/vauban-<next patch version>-wheels.tar of this checkout: the same code under
    another version, as an operator's next release would be. Returns that version."""
    source = work / "next"
    listed = subprocess.run(["git", "ls-files", "pyproject.toml", "README.md", *_packages()],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    for rel in listed.split():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, source / rel)
    current = version(REPO)
    major, minor, patch = current.split(".")
    nxt = f"{major}.{minor}.{int(patch) + 1}"
    for rel, old, new in (("pyproject.toml", f'version = "{current}"', f'version = "{nxt}"'),
                          ("agent/__init__.py", '__version__ = "', f'__version__ = "{nxt}"  # '),
                          ("controller/__init__.py", '__version__ = "',
                           f'__version__ = "{nxt}"  # ')):
        text = (source / rel).read_text()
        if old not in text:
            raise ValueError(f"{rel} has no {old!r}: the version cannot be raised")
        (source / rel).write_text(text.replace(old, new, 1))
    build_release(dest, source)
    return nxt
