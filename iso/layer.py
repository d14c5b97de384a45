"""The ISO's Vauban layer: the agent's venv and the node's settings, over the base.

The venv is made in a chroot of the base seen through an overlay, so its python is the
image's /usr/bin/python3 and it sees the base's python3-rados/rbd; only the overlay's upper
folder (the files the build added) is squashed into 10-vauban.squashfs. The layer only
adds files: the installer unpacks the layers in order with `unsquashfs -f`, and live-boot
stacks them, so a whiteout (a deletion) in the upper folder is refused.

The files written are those the roles write on a node with their defaults (agent.toml,
the systemd units, modules-load, sysctl, udev and chrony settings, libvirt's migration TLS
lines and /etc/pki folders), plus /etc/vauban/release.json. Timestamps are
SOURCE_DATE_EPOCH's and the .pyc files are compiled with hash-checked invalidation, so the
same inputs give the same squashfs.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import yaml

from iso.base import ROLES, Base
from iso.mounts import chroot_mounts, mount

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "packaging" / "systemd"
VENV = "opt/vauban/venv"
AGENT_DATA_DIR = "var/lib/vauban/agent"
# units started at boot, when the checkout has them (the appliance's come with appliance/)
# (vauban-controller.service is copied too, but a node never starts a controller; the agent
# is enabled by the first boot once the node joined: a live system without answers, or a
# node whose join failed, runs no agent that could only fail)
ENABLED_UNITS = ("vauban-installer.service",
                 "vauban-firstboot.service", "vauban-banner.service",
                 "vauban-hostkeys.service", "vauban-live.service")
WHEEL = re.compile(r"(?P<name>[^-]+)-(?P<version>[^-]+)-.*\.whl")


@dataclass(frozen=True)
class Layer:
    squashfs: Path
    python_packages: list[dict[str, str]]  # [{name, version}] installed in the venv


def wheel_version(wheels: list[str], project: str = "vauban") -> str:
    """The version of `project`'s wheel among the wheel file names (exactly one)."""
    found = [m["version"] for name in wheels
             if (m := WHEEL.fullmatch(name)) and m["name"] == project]
    if len(found) != 1:
        raise ValueError(f"the wheel archive holds {len(found)} {project} wheels, not one")
    return found[0]


def role_files(roles: Path = ROLES) -> dict[str, str]:
    """The files the base and agent roles write with their defaults: {path: content}."""
    base = yaml.safe_load((roles / "base/defaults/main.yml").read_text())
    agent = yaml.safe_load((roles / "agent/defaults/main.yml").read_text())
    head = "# written by the Vauban ISO builder, as the playbooks' roles write it\n"
    modules = "".join(f"{module['name']}\n" for module in base["base_kernel_modules"])
    sysctl = "".join(f"{key} = {value}\n" for key, value in base["base_sysctl"].items())
    sources = "".join(f"server {server} iburst\n" for server in base["base_ntp_servers"])
    settings = "".join(f"{key} = {json.dumps(value)}\n" for key, value in {
        **agent["agent_settings"], "hardware_profile": agent["agent_hardware_profile"]}.items())
    clock = "" if base["base_clock_owner"] else " -x"
    return {
        "etc/modules-load.d/vauban.conf": modules,
        "etc/sysctl.d/60-vauban.conf": head + sysctl,
        "etc/udev/rules.d/65-vauban-kvm.rules": 'KERNEL=="kvm", GROUP="kvm", MODE="0660"',
        "etc/chrony/sources.d/vauban.sources": head + sources,
        "etc/default/chrony": head + f'DAEMON_OPTS="-F 1{clock}"\n',
        "etc/vauban/agent.toml": head + f'data_dir = "/{AGENT_DATA_DIR}"\n' + settings,
    }


# libvirt's and QEMU's TLS folders, as the hypervisor role makes them (the agent's unit may
# write under /etc/pki, but not make it: /etc is read-only to it)
PKI_DIRS = (("etc/pki", 0o755), ("etc/pki/CA", 0o755), ("etc/pki/libvirt", 0o755),
            ("etc/pki/libvirt/private", 0o700), ("etc/pki/qemu", 0o755))


def libvirt_lines(roles: Path = ROLES) -> dict[str, list[tuple[str, str]]]:
    """The lines the hypervisor role sets in libvirt's settings with its defaults (migration
    over TLS: QEMU verifies its peer, libvirtd admits only the region's libvirtd
    certificates): {path: [(regexp of the line replaced, line)]}."""
    hypervisor = yaml.safe_load((roles / "hypervisor/defaults/main.yml").read_text())
    qemu = [(r"^#?\s*migrate_tls_x509_verify\s*=", "migrate_tls_x509_verify = 1")]
    controllers = hypervisor["hypervisor_libvirt_cgroup_controllers"]
    if controllers is not None:
        qemu.insert(0, (r"^#?\s*cgroup_controllers\s*=",
                        f"cgroup_controllers = {json.dumps(controllers)}"))
    return {
        "etc/libvirt/qemu.conf": qemu,
        "etc/libvirt/libvirtd.conf": [
            (r"^#?\s*auth_tls\s*=", 'auth_tls = "none"'),
            (r"^#?\s*tls_allowed_dn_list\s*=",
             f"tls_allowed_dn_list = {json.dumps(hypervisor['hypervisor_tls_allowed_dn_list'])}"),
        ],
    }


def set_line(text: str, regexp: str, line: str) -> str:
    """`text` with its last line matching `regexp` replaced by `line`, or `line` added at
    its end when none matches (what Ansible's lineinfile does)."""
    lines = text.splitlines()
    found = [i for i, old in enumerate(lines) if re.search(regexp, old)]
    if found:
        lines[found[-1]] = line
    else:
        lines.append(line)
    return "\n".join(lines) + "\n"


def install_links(unit: Path) -> list[str]:
    """The folders `systemctl enable` links a unit into, from its [Install] section
    (WantedBy= gives <target>.wants, RequiredBy= <target>.requires)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit.read_text())
    return [f"{target}.{suffix}"
            for key, suffix in (("WantedBy", "wants"), ("RequiredBy", "requires"))
            for target in parser.get("Install", key, fallback="").split()]


def build_layer(base: Base, wheels_tar: Path, work: Path, out: Path, epoch: int,
                release: dict[str, object], log: Path | None = None,
                units: Path = UNITS) -> Layer:
    """`out` (a squashfs) holding the files the Vauban layer adds to `base`.

    `work` is an empty folder used for the overlay; everything mounted is unmounted on
    return, also on failure. Raises CalledProcessError on a failed command and
    ValueError when the upper folder holds a deletion."""
    for name in ("lower", "upper", "ovl", "merged", "wheels"):
        (work / name).mkdir(parents=True)
    with tarfile.open(wheels_tar) as tar:  # the wheels only, whatever else the archive names
        for member in tar.getmembers():
            data = tar.extractfile(member) if member.isfile() else None
            if data and member.name.endswith(".whl"):
                (work / "wheels" / Path(member.name).name).write_bytes(data.read())
    version = wheel_version([p.name for p in (work / "wheels").glob("*.whl")])
    merged = work / "merged"
    with ExitStack() as mounts:
        mount(mounts, ["-t", "squashfs", "-o", "loop,ro", str(base.squashfs)], work / "lower")
        mount(mounts, ["-t", "overlay", "overlay", "-o",
                        f"lowerdir={work / 'lower'},upperdir={work / 'upper'},"
                        f"workdir={work / 'ovl'}"], merged)
        mount(mounts, ["--bind", "-o", "ro", str(work / "wheels")], merged / "mnt")
        mount(mounts, ["-t", "tmpfs", "tmpfs"], merged / "tmp")
        chroot_mounts(merged, mounts)
        _install_venv(merged, version, epoch, log)
        _write_files(merged, release, units)
    upper = work / "upper"
    check_only_additions(upper)
    packages = venv_packages(upper / VENV)
    _squash(upper, out, epoch, log)
    return Layer(out, packages)


def _chroot(root: Path, args: list[str], epoch: int, log: Path | None) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/tmp",
           "TMPDIR": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", "PIP_NO_CACHE_DIR": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "SOURCE_DATE_EPOCH": str(epoch)}
    with open(log or os.devnull, "ab") as output:
        subprocess.run(["chroot", str(root), *args], check=True, env=env,
                       stdout=output, stderr=subprocess.STDOUT)


def _install_venv(root: Path, version: str, epoch: int, log: Path | None) -> None:
    venv = f"/{VENV}"
    _chroot(root, ["/usr/bin/python3", "-m", "venv", "--system-site-packages", venv],
            epoch, log)
    _chroot(root, [f"{venv}/bin/python", "-m", "pip", "install", "-q", "--no-index",
                   "--find-links", "/mnt", "--no-compile", f"vauban=={version}"], epoch, log)
    # ensurepip compiled pip's own files with timestamps: every .pyc is made again,
    # checked by the source's hash, which gives the same bytes on every build
    for cache in sorted((root / VENV).rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache)
    _chroot(root, [f"{venv}/bin/python", "-m", "compileall", "-q", "-j", "1",
                   "--invalidation-mode", "checked-hash", f"{venv}/lib"], epoch, log)


def _write_files(root: Path, release: dict[str, object], units: Path) -> None:
    files = dict(role_files())
    files["etc/vauban/release.json"] = json.dumps(release, indent=1, sort_keys=True) + "\n"
    for path, content in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(content)
        (root / path).chmod(0o644)
    (root / AGENT_DATA_DIR).mkdir(parents=True, exist_ok=True)
    (root / AGENT_DATA_DIR).chmod(0o711)  # QEMU, an unprivileged user, passes through
    for path, settings in libvirt_lines().items():  # the base's files, with the role's lines
        text = (root / path).read_text()
        for regexp, line in settings:
            text = set_line(text, regexp, line)
        (root / path).write_text(text)
    for folder, mode in PKI_DIRS:
        (root / folder).mkdir(exist_ok=True)
        (root / folder).chmod(mode)
    systemd = root / "etc/systemd/system"
    for unit in sorted(units.glob("*.service")):
        shutil.copyfile(unit, systemd / unit.name)
        (systemd / unit.name).chmod(0o644)
        if unit.name in ENABLED_UNITS:
            for folder in install_links(unit):
                wants = systemd / folder
                wants.mkdir(exist_ok=True)
                (wants / unit.name).unlink(missing_ok=True)
                (wants / unit.name).symlink_to(f"/etc/systemd/system/{unit.name}")


def check_only_additions(upper: Path) -> None:
    """Raises ValueError if the overlay's upper folder holds a whiteout or opaque folder."""
    for path in [upper, *upper.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISCHR(mode) and path.lstat().st_rdev == 0:
            raise ValueError(f"the Vauban layer deletes /{path.relative_to(upper)}")
        if stat.S_ISDIR(mode):
            for name in ("trusted.overlay.opaque", "user.overlay.opaque"):
                try:
                    os.getxattr(path, name)
                except OSError:
                    continue
                raise ValueError(f"the Vauban layer hides /{path.relative_to(upper)}")


def venv_packages(venv: Path) -> list[dict[str, str]]:
    """The Python distributions installed in the venv: [{name, version}] sorted by name."""
    rows = []
    for metadata in venv.glob("lib/python3*/site-packages/*.dist-info/METADATA"):
        fields: dict[str, str] = {}
        for line in metadata.read_text().splitlines():
            if not line:
                break  # the headers end here; the description may hold anything
            key, _, value = line.partition(": ")
            fields.setdefault(key, value)
        rows.append({"name": fields["Name"], "version": fields["Version"]})
    return sorted(rows, key=lambda row: row["name"].lower())


def _squash(tree: Path, out: Path, epoch: int, log: Path | None) -> None:
    with open(log or os.devnull, "ab") as output:
        subprocess.run(["mksquashfs", str(tree), str(out), "-noappend", "-comp", "zstd",
                        "-Xcompression-level", "15", "-b", "1M", "-no-xattrs", "-all-root",
                        "-reproducible", "-mkfs-time", str(epoch), "-all-time", str(epoch),
                        "-no-progress", "-quiet", "-processors", "2"],
                       check=True, stdout=output, stderr=subprocess.STDOUT)
