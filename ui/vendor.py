"""Vendor the web UI's front-end packages into controller/ui/static/vendor.

The controller serves every asset of its UI itself (air-gapped regions: nothing is
fetched at run time, no CDN). The packages come from the npm registry, pinned by
ui/package-lock.json, installed with `npm ci --ignore-scripts` into a cache folder keyed
by the lock file's hash (outside the checkout), and only the files the UI loads are
copied, with each package's licence. vendor/MANIFEST.json records the package versions
and the SHA-256 of every vendored file; a unit test checks the files against it.

After success the vendor folder holds exactly the files listed in the manifest; after a
failure (npm or a missing file) it is left as it was before the run.

Usage: python3 ui/vendor.py [--cache DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENDOR = HERE.parent / "controller" / "ui" / "static" / "vendor"
DEFAULT_CACHE = Path("/var/cache/vauban/ui-npm")

# what the UI loads: (package, path in the package, path under vendor/)
FILES: list[tuple[str, str, str]] = [
    ("htm", "preact/standalone.module.js", "htm-preact.js"),
    ("chart.js", "dist/chart.umd.min.js", "chart.umd.min.js"),
    ("@xterm/xterm", "lib/xterm.mjs", "xterm/xterm.mjs"),
    ("@xterm/xterm", "css/xterm.css", "xterm/xterm.css"),
    ("@xterm/addon-fit", "lib/addon-fit.mjs", "xterm/addon-fit.mjs"),
    ("@fontsource/ibm-plex-sans", "files/ibm-plex-sans-latin-400-normal.woff2",
     "fonts/ibm-plex-sans-400.woff2"),
    ("@fontsource/ibm-plex-sans", "files/ibm-plex-sans-latin-600-normal.woff2",
     "fonts/ibm-plex-sans-600.woff2"),
    ("@fontsource/ibm-plex-mono", "files/ibm-plex-mono-latin-400-normal.woff2",
     "fonts/ibm-plex-mono-400.woff2"),
]
# whole folders (noVNC's ES modules import each other and its pako copy by relative path)
TREES: list[tuple[str, str, str]] = [
    ("@novnc/novnc", "core", "novnc/core"),
    ("@novnc/novnc", "vendor/pako", "novnc/vendor/pako"),
]
# single modules with their relative imports (SHA-256 of an upload, computed as it is read)
MODULES: list[tuple[str, list[str], str]] = [
    ("@noble/hashes", ["sha2.js", "_md.js", "_u64.js", "utils.js"], "noble-hashes"),
]
ICONS = ["activity", "check", "chevron-right", "circle-alert", "cpu", "database",
         "folder-kanban", "hard-drive", "image", "key-round", "layout-dashboard", "log-out",
         "menu", "monitor", "network", "play", "plus", "power", "refresh-cw", "rotate-cw",
         "scroll-text", "search", "server", "shield", "square", "terminal", "trash-2",
         "users", "x"]
# packages taken from their registry tarball alone (`npm pack`, checked against the pinned
# integrity), not installed: Redoc's standalone bundle carries its dependencies, whose
# peer packages (React...) npm would otherwise install. (package, version, integrity,
# [(path in the package, path under vendor/)])
PACKED: list[tuple[str, str, str, list[tuple[str, str]]]] = [
    ("redoc", "3.0.1", "sha512-KDfoKaYW19LCl4YStgBnwlaNjYEFfs5zCNt1s1WZ2YM5u8d26Yuzd2l43fZO851Zsg"
     "IMe/D640fDJkD8eaRQKQ==", [("bundles/redoc.standalone.js", "redoc/redoc.standalone.js")]),
]
LICENCE_NAMES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "license")
SOURCE_MAP = re.compile(rb"\n?//# sourceMappingURL=\S+\s*$")
# what a bundle would fetch by itself from a CDN (Redoc: its attribution logo and icon
# sets): never fetched, as a region may be air-gapped; the bundle gets an empty data: URL,
# which it treats as an image or icon that did not load
REMOTE_ASSET = re.compile(rb"https://cdn\.[A-Za-z0-9.-]+/[^`\"'\s]*")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def install(cache_root: Path) -> Path:
    """node_modules for the lock file, from the cache when this lock was installed before."""
    lock = (HERE / "package-lock.json").read_bytes() + (HERE / "package.json").read_bytes()
    folder = cache_root / hashlib.sha256(lock).hexdigest()[:16]
    if (folder / ".complete").exists():
        return folder / "node_modules"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copy(HERE / "package.json", folder)
    shutil.copy(HERE / "package-lock.json", folder)
    subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
                   cwd=folder, check=True)
    (folder / ".complete").touch()
    return folder / "node_modules"


def unpack(cache_root: Path) -> Path:
    """A folder holding each PACKED package unpacked (as node_modules/<name>), its tarball
    fetched once with `npm pack` and checked against its pinned integrity."""
    import base64
    import tarfile
    folder = cache_root / "packed"
    for package, version, integrity, _ in PACKED:
        target = folder / "node_modules" / package
        if (target / ".complete").exists():
            continue
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        subprocess.run(["npm", "pack", "--silent", f"{package}@{version}"], cwd=target,
                       check=True, stdout=subprocess.DEVNULL)
        tarball = next(target.glob("*.tgz"))
        digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
        if f"sha512-{digest}" != integrity:
            raise SystemExit(f"{package}@{version}: the tarball does not match its integrity")
        with tarfile.open(tarball) as tar:
            tar.extractall(target, filter="data")
        for entry in (target / "package").iterdir():
            entry.rename(target / entry.name)
        (target / ".complete").touch()
    return folder / "node_modules"


def copy_file(src: Path, dst: Path) -> None:
    """Copy, without a source-map reference (the map is not vendored, and a browser's
    developer tools would otherwise ask the controller for it) and without the addresses
    of assets on a CDN (REMOTE_ASSET)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    if dst.suffix in (".js", ".mjs", ".css"):
        data = REMOTE_ASSET.sub(b"data:,", SOURCE_MAP.sub(b"\n", data))
    dst.write_bytes(data)


def icon_sprite(modules: Path) -> bytes:
    """One SVG of <symbol id="NAME"> elements, for <svg><use href="…#NAME"/></svg>."""
    symbols = []
    for name in ICONS:
        svg = (modules / "lucide-static" / "icons" / f"{name}.svg").read_text()
        body = svg[svg.index(">", svg.index("<svg")) + 1: svg.rindex("</svg>")]
        body = re.sub(r"<!--.*?-->", "", body, flags=re.S).strip()
        symbols.append(f'<symbol id="{name}" viewBox="0 0 24 24" fill="none" '
                       f'stroke="currentColor" stroke-width="2" stroke-linecap="round" '
                       f'stroke-linejoin="round">{body}</symbol>')
    return ('<svg xmlns="http://www.w3.org/2000/svg">' + "".join(symbols) + "</svg>\n").encode()


def build(modules: Path, packed: Path, out: Path) -> None:
    versions: dict[str, str] = {}
    packages = {p for p, _, _ in FILES + TREES} | {p for p, _, _ in MODULES} | {"lucide-static"}
    for package in sorted(packages | {p for p, _, _, _ in PACKED}):
        root = packed if package in {p for p, _, _, _ in PACKED} else modules
        meta = json.loads((root / package / "package.json").read_text())
        versions[package] = meta["version"]
        licence = next((root / package / n for n in LICENCE_NAMES
                        if (root / package / n).exists()), None)
        if licence is None:
            raise SystemExit(f"{package}: no licence file found")
        copy_file(licence, out / "licenses" / f"{package.replace('/', '__')}.txt")
    for package, src, dst in FILES:
        copy_file(modules / package / src, out / dst)
    for package, src, dst in TREES:
        for path in sorted((modules / package / src).rglob("*")):
            if path.is_file() and path.suffix in (".js", ".mjs"):
                copy_file(path, out / dst / path.relative_to(modules / package / src))
    for package, names, dst in MODULES:
        for name in names:
            copy_file(modules / package / name, out / dst / name)
    for package, _, _, copies in PACKED:
        for src, dst in copies:
            copy_file(packed / package / src, out / dst)
    (out / "icons.svg").write_bytes(icon_sprite(modules))
    files = {str(p.relative_to(out)): sha256(p) for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = {"packages": versions, "files": files}
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    modules = install(args.cache)
    packed = unpack(args.cache)
    with tempfile.TemporaryDirectory(dir=VENDOR.parent) as tmp:
        staged = Path(tmp) / "vendor"
        build(modules, packed, staged)
        shutil.rmtree(VENDOR, ignore_errors=True)
        staged.rename(VENDOR)
    print(f"vendored {len(json.loads((VENDOR / 'MANIFEST.json').read_text())['files'])} "
          f"files into {VENDOR.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
