"""Onboarding a server over SSH with paramiko: `vauban node add HOST`.

The server's host key must match the pin the operator gives (a SHA-256 fingerprint or
known_hosts lines); it is never accepted on first use. Logged in with the operator's
key (used for this connection only, never stored), the controller reads what the
hardware probes read (a small program it sends, which only reads /proc and /sys and
writes them back as a tar), qualifies the server against a profile, refuses an unfit
one with its report, and puts the controller's fleet key in root's authorized_keys,
so that rollouts log in with it from then on.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import paramiko

import hardware
from controller.errors import ServiceError
from controller.fleet.keys import HostKeyError, fingerprint, parse_public_key
from hardware.discover import discover
from hardware.model import QualificationReport, Verdict
from hardware.qualify import load_profile, qualify
from hardware.sysfs import Root

CONNECT_TIMEOUT_S = 15.0
# opening a session makes the server set up a login (PAM, logind): a loaded server takes
# longer for it than for a TCP handshake (seen: over 15 s on a busy emulated one)
SESSION_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 120.0
MAX_PROBE_BYTES = 64 * 1024 * 1024  # what the probe may send back
PROBE_MAIN = """
import io, os, sys, tarfile, tempfile
from hardware.record import record
from hardware.sysfs import Root
with tempfile.TemporaryDirectory() as d:
    record(Root("/"), __import__("pathlib").Path(d))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        t.add(d, arcname=".")
    sys.stdout.buffer.write(buf.getvalue())
"""


class OnboardingError(ServiceError):
    """The server could not be added; the message names it and the cause."""

    status = 422
    title = "Server not added"
    slug = "onboarding-failed"


class HostKeyMismatch(OnboardingError):
    title = "Host key does not match the pin"
    slug = "host-key-mismatch"


@dataclass(frozen=True)
class Pin:
    """What the operator pinned: a fingerprint, or the keys of known_hosts lines."""

    fingerprints: frozenset[str]

    @classmethod
    def from_known_hosts(cls, text: str, address: str, port: int) -> Pin:
        """The keys that known_hosts `text` lists for address (or [address]:port)."""
        names = {address} if port == 22 else {f"[{address}]:{port}"}
        found = set()
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 3 or line.startswith(("#", "@")):
                continue
            if names & set(fields[0].split(",")):
                try:
                    found.add(fingerprint(parse_public_key(" ".join(fields[1:3]))[1]))
                except HostKeyError:
                    continue
        if not found:
            raise OnboardingError(f"the known_hosts given list no key for {address}"
                                  f"{'' if port == 22 else f' port {port}'}")
        return cls(frozenset(found))


class _PinnedPolicy(paramiko.MissingHostKeyPolicy):
    """Accepts the server's key only when its fingerprint is pinned; records it."""

    def __init__(self, pin: Pin) -> None:
        self.pin = pin
        self.seen: paramiko.PKey | None = None

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        self.seen = key
        presented = fingerprint(key.asbytes())
        if presented not in self.pin.fingerprints:
            raise HostKeyMismatch(f"{hostname} presents host key {presented}, not the one "
                                  f"pinned ({', '.join(sorted(self.pin.fingerprints))}): "
                                  "refused; check the server's key out of band")


def _private_key(text: str) -> paramiko.PKey:
    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError):
            continue
    raise OnboardingError("the SSH key given is not an unencrypted ed25519, ECDSA or RSA "
                          "private key")


def connect(address: str, port: int, user: str, key_text: str, pin: Pin
            ) -> tuple[paramiko.SSHClient, str]:
    """A logged-in SSH client and the server's host key line. OnboardingError (or its
    HostKeyMismatch) naming the server and the cause."""
    key = _private_key(key_text)
    client = paramiko.SSHClient()
    policy = _PinnedPolicy(pin)
    client.set_missing_host_key_policy(policy)
    where = f"{user}@{address}:{port}"
    try:
        client.connect(address, port=port, username=user, pkey=key, timeout=CONNECT_TIMEOUT_S,
                       banner_timeout=CONNECT_TIMEOUT_S, auth_timeout=CONNECT_TIMEOUT_S,
                       look_for_keys=False, allow_agent=False)
    except HostKeyMismatch:
        client.close()
        raise
    except paramiko.AuthenticationException as e:
        client.close()
        raise OnboardingError(f"{where} refused the SSH key given: {e}") from e
    except (OSError, EOFError, paramiko.SSHException) as e:  # TimeoutError is an OSError
        client.close()
        raise OnboardingError(f"cannot reach {where}: {e}") from e
    assert policy.seen is not None
    return client, f"{policy.seen.get_name()} {policy.seen.get_base64()}"


def run(client: paramiko.SSHClient, command: str, stdin: bytes = b"",
        limit: int = 1024 * 1024) -> bytes:
    """The command's output; OnboardingError with its errors if it fails, or if the
    connection breaks or stays silent (COMMAND_TIMEOUT_S)."""
    transport = client.get_transport()
    where = transport.getpeername()[0] if transport is not None else "the server"
    try:
        return _run(client, command, stdin, limit)
    except (OSError, EOFError, paramiko.SSHException) as e:  # TimeoutError is an OSError
        raise OnboardingError(f"'{command.split()[0]}' on {where}: the SSH connection "
                              f"failed: {type(e).__name__}: {e}") from e


def _run(client: paramiko.SSHClient, command: str, stdin: bytes, limit: int) -> bytes:
    transport = client.get_transport()
    assert transport is not None  # connected
    chan = transport.open_session(timeout=SESSION_TIMEOUT_S)
    chan.settimeout(COMMAND_TIMEOUT_S)
    chan.exec_command(command)
    if stdin:
        chan.sendall(stdin)
    chan.shutdown_write()
    out = bytearray()
    while chunk := chan.recv(65536):
        out += chunk
        if len(out) > limit:
            chan.close()
            raise OnboardingError(f"'{command.split()[0]}' sent more than {limit} bytes")
    status = chan.recv_exit_status()
    err = chan.makefile_stderr("rb").read().decode(errors="replace").strip()
    chan.close()
    if status != 0:
        raise OnboardingError(f"'{command[:60]}' failed ({status}): {err[-300:]}")
    return bytes(out)


def _probe_zip() -> bytes:
    """A zipapp of the read-only probe: hardware.sysfs, hardware.record and a main."""
    package = Path(hardware.__file__).parent
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("hardware/__init__.py", "")
        for module in ("sysfs.py", "record.py"):
            z.writestr(f"hardware/{module}", (package / module).read_text())
        z.writestr("__main__.py", PROBE_MAIN)
    return buf.getvalue()


def qualify_remote(client: paramiko.SSHClient, profile_name: str) -> QualificationReport:
    """The server's qualification against the profile, from what its probes read."""
    profile = load_profile(profile_name)
    remote = run(client, "mktemp /tmp/vauban-probe-XXXXXX.pyz").decode().strip()
    try:
        run(client, f"cat > {remote}", stdin=_probe_zip())
        tar = run(client, f"python3 {remote}", limit=MAX_PROBE_BYTES)
    finally:
        run(client, f"rm -f {remote}")
    with tempfile.TemporaryDirectory() as d:
        extract_recording(tar, Path(d))
        return qualify(discover(Root(d)), profile)


def extract_recording(tar: bytes, dest: Path) -> None:
    """Unpack what a server's probe sent: files, folders and links that stay inside `dest`.
    The server may be hostile: anything else (a path or a link leading out, a device, a
    link loop) is dropped, so the probes never read the controller's own files; a link
    that a later member made lead out is dropped at the end. OnboardingError if `tar` is
    not a tar (what was unpacked then stays in `dest`)."""
    top = dest.resolve()
    try:
        with tarfile.open(fileobj=io.BytesIO(tar)) as t:
            for member in t:
                _extract(t, member, top)
    except tarfile.TarError as e:
        raise OnboardingError(f"the probe's output is not a tar: {e}") from e
    _drop_links_leading_out(top)


def _inside(top: Path, path: Path) -> bool:
    """Whether `path`, its links followed, lies in `top` (a link loop does not)."""
    try:
        resolved = path.resolve()
    except (RuntimeError, OSError):  # a loop of links
        return False
    return top in (resolved, *resolved.parents)


def _extract(t: tarfile.TarFile, member: tarfile.TarInfo, top: Path) -> None:
    """The member unpacked under `top` if it stays there; OnboardingError if it cannot
    be written (a file over a folder, a full disk)."""
    if not _inside(top, top / member.name):
        return
    target = (top / member.name).resolve()
    try:
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
        elif member.isfile():
            target.parent.mkdir(parents=True, exist_ok=True)
            source = t.extractfile(member)
            target.write_bytes(source.read() if source else b"")
        elif member.issym():
            if not member.linkname.startswith("/") and \
                    _inside(top, target.parent / member.linkname):
                target.parent.mkdir(parents=True, exist_ok=True)
                target.unlink(missing_ok=True)
                target.symlink_to(member.linkname)
    except OSError as e:
        raise OnboardingError(f"cannot unpack {member.name[:100]!r} of the probe's output: "
                              f"{e.strerror}") from e


def _drop_links_leading_out(top: Path) -> None:
    """Remove the links under `top` that lead out of it, until none does (a link made
    when "d" did not exist, "a" -> "d/..", leads out once "d" -> "." is made; and
    removing one link changes where others lead)."""
    while True:
        out = [Path(folder, name) for folder, dirs, files in os.walk(top)
               for name in dirs + files
               if Path(folder, name).is_symlink() and not _inside(top, Path(folder, name))]
        if not out:
            return
        for link in out:
            link.unlink()


def authorize(client: paramiko.SSHClient, public_line: str) -> None:
    """Put the fleet key in the user's authorized_keys, once."""
    script = ("umask 077; mkdir -p ~/.ssh; touch ~/.ssh/authorized_keys; k=$(cat); "
              "grep -qxF \"$k\" ~/.ssh/authorized_keys || "
              "printf '%s\\n' \"$k\" >> ~/.ssh/authorized_keys")
    run(client, script, stdin=public_line.encode())


def unfit(report: QualificationReport) -> str | None:
    """The failed checks in words, or None when the server may join."""
    failed = [r for r in report.results if r.verdict == Verdict.FAIL]
    if not failed:
        return None
    return "; ".join(f"{r.check}: {r.reason}" for r in failed)
