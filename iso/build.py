"""Build the appliance ISO: `vauban-<version>-amd64.iso`, its SHA-256 sum and its SBOM.

    python -m iso.build --out DIR [--cache DIR] [--wheels dist/vauban-<v>-wheels.tar]

The ISO is hybrid (BIOS and UEFI, disk or CD) and carries two squashfs layers under /live,
stacked by live-boot in the order /live/filesystem.module lists them: 00-base (Debian, see
iso/base.py) and 10-vauban (the agent's venv and settings, see iso/layer.py). Nothing is
downloaded but the Debian packages of the base, which is cached by the hash of its inputs.
The finished ISO is cached too, by the hash of all its inputs (base, wheels, units, the
roles' files, this builder's sources and the host tools' versions): the same inputs give
the same bytes, and a second build of them is a copy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from calendar import timegm
from dataclasses import dataclass
from pathlib import Path

from iso import base as base_layer
from iso import grub, hashing, identity, layer, sbom
from iso.mounts import remove_tree

ISO_TOOLS = ("xorriso", "grub-pc-bin", "grub-efi-amd64-bin", "grub-common", "mtools",
             "squashfs-tools")
SOURCES = Path(__file__).resolve().parent
LAYERS = ("00-base.squashfs", "10-vauban.squashfs")
KEEP_ISOS = 2  # finished ISOs kept in the cache (older ones are removed)


@dataclass(frozen=True)
class Result:
    iso: Path
    sha256: Path
    sbom: Path
    digest: str  # the ISO's SHA-256
    cached: bool  # True when copied from the cache


def wheel_digests(wheels_tar: Path) -> dict[str, str]:
    """{wheel file name: sha256 of its bytes} of the archive: what is installed, whatever
    the archive's own dates."""
    digests = {}
    with tarfile.open(wheels_tar) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(".whl"):
                data = tar.extractfile(member)
                assert data is not None
                digests[Path(member.name).name] = hashing.sha256_bytes(data.read())
    return dict(sorted(digests.items()))


def newest_wheel_entry(wheels_tar: Path) -> int:
    """The newest date (epoch seconds, UTC) of any file inside the archive's wheels."""
    newest = 0
    with tarfile.open(wheels_tar) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(".whl"):
                data = tar.extractfile(member)
                assert data is not None
                with zipfile.ZipFile(data) as wheel:
                    for info in wheel.infolist():
                        newest = max(newest, timegm((*info.date_time, 0, 0, 0)))
    return newest


def iso_inputs(base: base_layer.Base, wheels_tar: Path,
               units: Path = layer.UNITS) -> dict[str, object]:
    """Everything the ISO is made from; its hash names the cached ISO."""
    return {
        "base": base.hash,
        "wheels": wheel_digests(wheels_tar),
        "units": {unit.name: hashing.file_sha256(unit) for unit in sorted(units.glob("*.service"))},
        "role_files": layer.role_files(),
        "builder": {src.name: hashing.file_sha256(src) for src in sorted(SOURCES.glob("*.py"))},
        "tools": {tool: hashing.tool_version(tool) for tool in ISO_TOOLS},
    }


def source_date_epoch(base: base_layer.Base, wheels_tar: Path) -> int:
    """The ISO's date: the newest of the base's build and the wheels' files."""
    built = base.manifest()["built"]
    assert isinstance(built, int)
    return max(built, newest_wheel_entry(wheels_tar))


def build(out: Path, wheels_tar: Path, cache: Path = base_layer.DEFAULT_CACHE,
          log: Path | None = None, reuse: bool = True) -> Result:
    """out/vauban-<v>-amd64.iso, .iso.sha256 and .sbom.cdx.json for `wheels_tar`.

    The base is built first if the cache has none for its inputs; with `reuse`, an ISO
    of the same inputs in the cache is copied instead of built again. The three files
    are written to `out` only once all are complete, each replaced by a rename (readers
    never see a partial file). Raises ValueError when a layer holds an identity (host key,
    machine id, secret) or the archive no vauban wheel, CalledProcessError when a
    command fails."""
    base = base_layer.ensure_base(cache, log)
    with tarfile.open(wheels_tar) as tar:
        version = layer.wheel_version([Path(name).name for name in tar.getnames()])
    inputs = iso_inputs(base, wheels_tar)
    input_hash = hashing.digest(inputs)
    names = output_names(version)
    stored = cache / f"iso-{input_hash}"
    out.mkdir(parents=True, exist_ok=True)
    cached = reuse and all((stored / name).is_file() for name in names)
    if not cached:
        _build_into_cache(stored, base, wheels_tar, version, input_hash, inputs, log)
    for name in names:
        tmp = out / f".{name}.{os.getpid()}"
        try:
            os.link(stored / name, tmp)  # the cache is never written in place: share it
        except OSError:
            shutil.copyfile(stored / name, tmp)
        tmp.rename(out / name)
    digest = (out / names[1]).read_text().split()[0]
    return Result(out / names[0], out / names[1], out / names[2], digest, cached)


def output_names(version: str) -> tuple[str, str, str]:
    iso = f"vauban-{version}-amd64.iso"
    return iso, f"{iso}.sha256", f"vauban-{version}-amd64.sbom.cdx.json"


def _build_into_cache(stored: Path, base: base_layer.Base, wheels_tar: Path, version: str,
                      input_hash: str, inputs: dict[str, object], log: Path | None) -> None:
    epoch = source_date_epoch(base, wheels_tar)
    stored.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"iso-{input_hash}.building-", dir=stored.parent))
    try:
        tree = work / "tree"
        (tree / "live").mkdir(parents=True)
        (tree / "boot/grub").mkdir(parents=True)
        release: dict[str, object] = {"version": version, "built": _iso_date(epoch),
                                      "base": base.hash, "inputs": input_hash}
        built = layer.build_layer(base, wheels_tar, work / "layer", tree / "live" / LAYERS[1],
                                  epoch, release, log)
        os.link(base.squashfs, tree / "live" / LAYERS[0])
        check_identity([tree / "live" / name for name in LAYERS])
        shutil.copyfile(base.kernel, tree / "live/vmlinuz")
        shutil.copyfile(base.initrd, tree / "live/initrd.img")
        (tree / "live/filesystem.module").write_text("".join(f"{n}\n" for n in LAYERS))
        (tree / "boot/grub/grub.cfg").write_text(grub.grub_cfg(version))
        result = work / "result"
        result.mkdir()
        iso_name, sum_name, sbom_name = output_names(version)
        make_iso(tree, result / iso_name, volume_id(version), epoch, log)
        digest = hashing.file_sha256(result / iso_name)
        (result / sum_name).write_text(f"{digest}  {iso_name}\n")
        packages = base.manifest()["packages"]
        assert isinstance(packages, list)
        document = sbom.sbom(version, input_hash, epoch, base_layer.SUITE, packages,
                             built.python_packages)
        (result / sbom_name).write_text(json.dumps(document, indent=1) + "\n")
        (result / "inputs.json").write_text(json.dumps(inputs, indent=1, sort_keys=True))
        shutil.rmtree(stored, ignore_errors=True)
        try:
            result.rename(stored)
        except OSError:  # another build of the same inputs stored it first: the same bytes
            if not (stored / sum_name).is_file():
                raise
    finally:
        remove_tree(work)
    _prune(stored)


def _prune(keep: Path) -> None:
    """Removes all but the newest KEEP_ISOS finished ISOs (and stale partial builds)."""
    finished = sorted((p for p in keep.parent.glob("iso-*") if ".building-" not in p.name),
                      key=lambda p: p.stat().st_mtime, reverse=True)
    for old in finished[KEEP_ISOS:]:
        if old != keep:
            remove_tree(old)
    for partial in keep.parent.glob("iso-*.building-*"):
        if time.time() - partial.stat().st_mtime > 24 * 3600:
            remove_tree(partial)


def _iso_date(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def volume_id(version: str) -> str:
    """The ISO's volume id: never `VAUBAN`, the label of an answers medium."""
    return "VAUBAN_" + "".join(c if c.isalnum() else "_" for c in version.upper())


def squashfs_listing(image: Path) -> tuple[list[str], dict[str, int]]:
    """The paths in a squashfs (relative, no leading '/') and its regular files' sizes."""
    out = subprocess.run(["unsquashfs", "-lls", "-d", "", str(image)], check=True,
                         capture_output=True, text=True).stdout
    paths, sizes = [], {}
    for line in out.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 6 or fields[0][0] not in "-dlcbps":
            continue
        path = fields[5].split(" -> ")[0].lstrip("/")
        if not path:
            continue
        paths.append(path)
        if fields[0][0] == "-":
            sizes[path] = int(fields[2])
    return paths, sizes


def check_identity(images: list[Path]) -> None:
    """Raises ValueError naming every host key, machine id or secret in the images."""
    problems = []
    for image in images:
        paths, sizes = squashfs_listing(image)
        problems += [f"{image.name}: {p}" for p in identity.identity_problems(paths, sizes)]
    if problems:
        raise ValueError("identities in the image:\n" + "\n".join(problems))


def make_iso(tree: Path, iso: Path, volid: str, epoch: int, log: Path | None) -> None:
    """A hybrid BIOS+UEFI ISO of `tree` by grub-mkrescue, dated `epoch`.

    With SOURCE_DATE_EPOCH set, xorriso dates the files and mtools the files of the EFI
    system partition image; every file's date is set to `epoch`. Two things grub-mkrescue
    takes from the clock are fixed by wrappers: xorriso's --modification-date (the
    volume's dates, its uuid and GPT ids) and mformat's FAT volume serial (random)."""
    wrappers = iso.parent / "wrappers"
    wrappers.mkdir(exist_ok=True)
    xorriso, mformat = shutil.which("xorriso"), shutil.which("mformat")
    if xorriso is None or mformat is None:
        raise FileNotFoundError("xorriso and mformat (mtools) are needed to make the ISO")
    stamp = time.strftime("%Y%m%d%H%M%S00", time.gmtime(epoch))
    (wrappers / "xorriso").write_text(
        "#!/bin/bash\nargs=()\nfor a in \"$@\"; do\n  case \"$a\" in\n"
        f"    --modification-date=*) args+=(--modification-date={stamp}) ;;\n"
        "    *) args+=(\"$a\") ;;\n  esac\ndone\n"
        f'exec {xorriso} "${{args[@]}}"\n')
    (wrappers / "mformat").write_text(
        f'#!/bin/sh\nexec {mformat} -N {epoch & 0xFFFFFFFF:08x} "$@"\n')
    for wrapper in wrappers.iterdir():
        wrapper.chmod(0o755)
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "TZ": "UTC",
           "PATH": f"{wrappers}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    with open(log or os.devnull, "ab") as output:
        subprocess.run(["grub-mkrescue", f"--xorriso={wrappers / 'xorriso'}", "-o", str(iso),
                        str(tree), "--",
                        "-volid", volid, "-volume_date", "all_file_dates", f"={epoch}"],
                       check=True, env=env, stdout=output, stderr=subprocess.STDOUT)
    shutil.rmtree(wrappers)


def default_wheels(dist: Path = Path("dist")) -> Path:
    found = sorted(dist.glob("vauban-*-wheels.tar"))
    if len(found) != 1:
        raise SystemExit(f"{dist}: {len(found)} wheel archives (run make dist, or --wheels)")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=base_layer.DEFAULT_CACHE)
    parser.add_argument("--wheels", type=Path, help="default: dist/vauban-<v>-wheels.tar")
    parser.add_argument("--log", type=Path, help="the commands' output goes here")
    parser.add_argument("--rebuild", action="store_true",
                        help="build the ISO even when the cache has one of the same inputs")
    args = parser.parse_args(argv)
    started = time.monotonic()
    result = build(args.out, args.wheels or default_wheels(), args.cache, args.log,
                   reuse=not args.rebuild)
    print(f"{result.iso} sha256 {result.digest} "
          f"({'from the cache' if result.cached else 'built'} in "
          f"{time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
