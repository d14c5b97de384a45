"""Onboarding without a server: what the probe sends back, host key pins, the verdict."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import paramiko
import pytest

from controller.fleet import onboard
from controller.fleet.hosts import _check_adopted
from controller.fleet.keys import fingerprint
from controller.fleet.onboard import (
    HostKeyMismatch,
    OnboardingError,
    Pin,
    _PinnedPolicy,
    extract_recording,
    unfit,
)
from controller.fleet.schemas import FleetHostCreate
from hardware.discover import discover
from hardware.model import CheckResult, QualificationReport, Verdict
from hardware.qualify import load_profile, qualify
from hardware.sysfs import Root
from tests.hwtrees import TREES


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            t.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buf.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _member(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, b""


def _tree(top: Path) -> dict[str, str]:
    """Every path under `top`: 'dir', 'file:<content>' or 'link:<target>'."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(top))
            if path.is_symlink():
                found[rel] = f"link:{os.readlink(path)}"
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = f"file:{path.read_text()}"
    return found


def test_extract_recording_keeps_files_folders_and_links_that_stay_inside(
        tmp_path: Path) -> None:
    dest = tmp_path / "rec"
    dest.mkdir()
    extract_recording(_tar(
        _member(".", tarfile.DIRTYPE),
        _member("./sys", tarfile.DIRTYPE),
        _file("./proc/cpuinfo", b"processor : 0\n"),
        _file("sys/devices/pci0000:00/0000:00:01.0/vendor", b"0x8086\n"),
        _member("sys/bus/pci/devices/0000:00:01.0", tarfile.SYMTYPE,
                "../../../devices/pci0000:00/0000:00:01.0"),
        _member("sys/class/net/eth0/device/driver", tarfile.SYMTYPE,
                "../../../../bus/pci/drivers/e1000e"),  # dangling, as recordings have them
        _member("proc/mounts", tarfile.SYMTYPE, "self/mounts"),
    ), dest)
    tree = _tree(dest)
    assert tree["proc/cpuinfo"] == "file:processor : 0\n"
    assert tree["sys/devices/pci0000:00/0000:00:01.0/vendor"] == "file:0x8086\n"
    assert tree["sys/bus/pci/devices/0000:00:01.0"] == \
        "link:../../../devices/pci0000:00/0000:00:01.0"
    assert tree["sys/class/net/eth0/device/driver"] == "link:../../../../bus/pci/drivers/e1000e"
    assert tree["proc/mounts"] == "link:self/mounts"
    assert Root(dest).read("sys/bus/pci/devices/0000:00:01.0/vendor") == "0x8086"
    assert Root(dest).link_name("sys/class/net/eth0/device/driver") == "e1000e"


def test_extract_recording_drops_what_leads_out(tmp_path: Path) -> None:
    dest = tmp_path / "rec"
    dest.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("the controller's")
    extract_recording(_tar(
        _file("../outside", b"written out"),
        _file("sys/../../outside2", b"written out"),
        _file("/etc/cron.d/absolute", b"absolute"),
        _member("abs", tarfile.SYMTYPE, "/etc/passwd"),
        _member("abs-inside", tarfile.SYMTYPE, str(dest / "proc")),  # absolute, even inside
        _member("up", tarfile.SYMTYPE, "../secret"),
        _member("sys/up2", tarfile.SYMTYPE, "../../secret"),
        _member("hard", tarfile.LNKTYPE, "../secret"),
        _member("dev/kvm", tarfile.CHRTYPE),
        _member("dev/sda", tarfile.BLKTYPE),
        _member("fifo", tarfile.FIFOTYPE),
        _file("up/through-the-dropped-link", b"x"),
    ), dest)
    assert not (tmp_path / "outside").exists() and not (tmp_path / "outside2").exists()
    assert secret.read_text() == "the controller's"
    tree = _tree(dest)
    # a link dropped leaves its name free: what follows it lands inside, in a folder
    assert tree == {"up": "dir", "up/through-the-dropped-link": "file:x"}, tree


def test_pin_from_known_hosts_matches_the_address_or_address_and_port(tmp_path: Path) -> None:
    k1, k2, k3 = (paramiko.ECDSAKey.generate() for _ in range(3))
    f1, f2, f3 = (fingerprint(k.asbytes()) for k in (k1, k2, k3))

    def line(names: str, key: paramiko.PKey) -> str:
        return f"{names} {key.get_name()} {key.get_base64()}"

    text = "\n".join([
        "# a comment naming 10.0.0.21 ssh-ed25519 AAAA",
        f"@cert-authority 10.0.0.21 {k3.get_name()} {k3.get_base64()}",
        f"@revoked 10.0.0.21 {k3.get_name()} {k3.get_base64()}",
        "10.0.0.21 garbage",
        "10.0.0.21 ssh-ed25519 AAAAnot-base64!",
        "10.0.0.21 ssh-rsa " + k1.get_base64(),  # a key under another type's name
        "",
        line("other,10.0.0.21", k1) + " a comment",
        line("10.0.0.210", k3),
        line("[10.0.0.21]:2222", k2),
    ])
    assert Pin.from_known_hosts(text, "10.0.0.21", 22) == Pin(frozenset({f1}))
    assert Pin.from_known_hosts(text, "10.0.0.21", 2222) == Pin(frozenset({f2}))
    assert f3 not in Pin.from_known_hosts(text + "\n" + line("10.0.0.21", k2), "10.0.0.21",
                                          22).fingerprints
    with pytest.raises(OnboardingError, match="the known_hosts given list no key for 10.0.0.22$"):
        Pin.from_known_hosts(text, "10.0.0.22", 22)
    with pytest.raises(OnboardingError, match="no key for 10.0.0.21 port 2200$"):
        Pin.from_known_hosts(text, "10.0.0.21", 2200)
    with pytest.raises(OnboardingError, match="no key for node-1"):
        Pin.from_known_hosts("", "node-1", 22)


def test_pinned_policy_accepts_the_pinned_key_only() -> None:
    pinned, other = paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()
    policy = _PinnedPolicy(Pin(frozenset({fingerprint(pinned.asbytes())})))
    client = paramiko.SSHClient()
    policy.missing_host_key(client, "10.0.0.21", pinned)
    assert policy.seen is pinned
    with pytest.raises(HostKeyMismatch) as e:
        policy.missing_host_key(client, "10.0.0.21", other)
    assert e.value.status == 422 and e.value.slug == "host-key-mismatch"
    assert f"10.0.0.21 presents host key {fingerprint(other.asbytes())}, not the one pinned " \
           f"({fingerprint(pinned.asbytes())})" in e.value.detail


def test_unfit_lists_only_the_failed_checks() -> None:
    def report(*results: tuple[str, Verdict]) -> QualificationReport:
        return QualificationReport(profile="compute", verdict=Verdict.PASS, results=[
            CheckResult(check=c, verdict=v, reason=f"{c} says {v}") for c, v in results])

    assert unfit(report()) is None
    assert unfit(report(("memory", Verdict.PASS), ("kvm", Verdict.WARN))) is None
    assert unfit(report(("memory", Verdict.FAIL), ("kvm", Verdict.WARN),
                        ("disks", Verdict.FAIL))) == \
        "memory: memory says FAIL; disks: disks says FAIL"


def test_the_probe_runs_and_its_recording_qualifies(tmp_path: Path) -> None:
    """The zipapp sent to a server, run by python3 on this machine: what it prints is a
    recording that the controller's probes read and qualify, as for a server."""
    probe = tmp_path / "probe.pyz"
    probe.write_bytes(onboard._probe_zip())
    tar = subprocess.run(["python3", str(probe)], check=True, capture_output=True,
                         cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}).stdout
    dest = tmp_path / "recording"
    dest.mkdir()
    extract_recording(tar, dest)
    assert Root(dest).read("proc/meminfo", "").startswith("MemTotal:")
    live, recorded = discover(Root("/")), discover(Root(dest))
    assert recorded.cpu == live.cpu and recorded.memory.total_mib == live.memory.total_mib
    report = qualify(recorded, load_profile("lab"))
    assert report.profile == "lab" and report.results
    assert {r.check for r in report.results} >= {"min_memory_gib"}


def test_extract_recording_drops_links_that_a_later_link_leads_out(tmp_path: Path) -> None:
    """A link pointing inside when made ("a" -> "d/..", with no "d" yet) must not lead out
    once a later member makes "d" a link (to "."): the probes would read through it."""
    dest = tmp_path / "rec"
    dest.mkdir()
    (tmp_path / "secret").write_text("the controller's")
    extract_recording(_tar(
        _member("a", tarfile.SYMTYPE, "d/.."),
        _member("sys", tarfile.SYMTYPE, "e/e2/../../sys"),
        _member("d", tarfile.SYMTYPE, "."),
        _member("e", tarfile.SYMTYPE, "."),
        _member("e2", tarfile.SYMTYPE, "."),
        _member("keep", tarfile.SYMTYPE, "d/x"),  # inside, through "d": kept
    ), dest)
    assert Root(dest).read("a/secret") is None
    assert Root(dest).read("sys/secret") is None
    top = dest.resolve()
    for path in dest.iterdir():
        assert top in (path.resolve(), *path.resolve().parents), path
    assert os.readlink(dest / "keep") == "d/x"


def test_extract_recording_drops_link_loops(tmp_path: Path) -> None:
    dest = tmp_path / "rec"
    dest.mkdir()
    extract_recording(_tar(
        _member("a", tarfile.SYMTYPE, "b"),
        _member("b", tarfile.SYMTYPE, "a"),
        _member("c", tarfile.SYMTYPE, "a/x"),
        _file("a/y", b"through a loop"),
        _file("z", b"kept"),
    ), dest)
    assert (dest / "z").read_text() == "kept"
    assert not (dest / "c").is_symlink()


def test_extract_recording_refuses_what_is_not_a_tar(tmp_path: Path) -> None:
    with pytest.raises(OnboardingError, match="the probe's output is not a tar"):
        extract_recording(b"Traceback (most recent call last):\n", tmp_path)


def test_extract_recording_refuses_a_member_it_cannot_write(tmp_path: Path) -> None:
    with pytest.raises(OnboardingError, match="cannot unpack 'sys' of the probe's output"):
        extract_recording(_tar(_member("sys/x", tarfile.DIRTYPE),
                               _member("sys", tarfile.SYMTYPE, "proc")), tmp_path)


@pytest.mark.parametrize("tree", ["gpu-server", "workstation", "this-machine"])
def test_extract_recording_keeps_a_whole_recorded_tree(tmp_path: Path, tree: str) -> None:
    """A real recording (links to ../../devices, links /sys itself loops through) comes
    out as it went in."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        t.add(TREES / tree, arcname=".")
    dest = tmp_path / "rec"
    dest.mkdir()
    extract_recording(buf.getvalue(), dest)
    assert _tree(dest) == _tree(TREES / tree)


def test_an_adopted_node_must_present_a_key_it_reported() -> None:
    """The operator's pin may match a server, yet that server is not the joined node."""
    reported, other = paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()
    body = FleetHostCreate(address="10.0.0.21", name="node-1",
                           ssh_private_key="k" * 64)
    known = frozenset({fingerprint(reported.asbytes())})
    _check_adopted(body, known, f"{reported.get_name()} {reported.get_base64()}")
    _check_adopted(body, None, f"{other.get_name()} {other.get_base64()}")  # not adopting
    with pytest.raises(HostKeyMismatch) as e:
        _check_adopted(body, known, f"{other.get_name()} {other.get_base64()}")
    assert e.value.detail == (
        f"10.0.0.21 presents host key {fingerprint(other.asbytes())}, which node node-1 did "
        f"not report ({fingerprint(reported.asbytes())}): it is another server; refused")
