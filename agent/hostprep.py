"""Make sure libvirt's daemons run on this node, also where PID 1 is not systemd.

Decision on how QEMU runs: we keep libvirt's Debian default, QEMU as the
unprivileged `libvirt-qemu` user with `dynamic_ownership` (libvirt chowns a
VM's disk and console files to that user while the VM runs and back after).
That needs no change to /etc/libvirt/qemu.conf, only that every directory
above a VM's files be searchable (x) by `libvirt-qemu`; `unreachable_dirs()`
says which are not, and the storage driver creates its directories so that
they are. Running QEMU as root would hide such mistakes and give a guest
escape the whole host, so we do not.

Without systemd nothing creates the runtime directories, the `kvm` and
`libvirt-qemu` groups or the `libvirt-qemu` user (the Debian package that
would, libvirt-daemon-system, pulls in systemd units), and libvirtd's QEMU
driver refuses to start without them; `ensure_libvirtd()` does that and starts
`virtlogd -d` and `libvirtd -d`.

Nor does anything apply udev's rule for /dev/kvm (group `kvm`, mode 0660): left
root:root 0600, libvirtd probes QEMU as root (KVM found) but checks its
capability cache as `libvirt-qemu` (KVM not accessible), finds the cache stale
and probes QEMU again on every domain lookup, so each define takes tens of
seconds. `ensure_kvm_device()` does what udev would and checks the result.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import libvirt

log = logging.getLogger(__name__)

LIBVIRT_URI = "qemu:///system"
QEMU_USER = "libvirt-qemu"
QEMU_GROUP = "libvirt-qemu"  # Debian builds libvirt with qemu_group=libvirt-qemu
KVM_GROUP = "kvm"
KVM_DEVICE = Path("/dev/kvm")
# Debian's statically allocated id for libvirt-qemu; used when free so that
# file ownership matches across nodes (and with nodes installed from packages).
DEBIAN_QEMU_ID = 64055

RUN_DIRS = (Path("/var/log/libvirt"), Path("/var/run/libvirt"), Path("/var/lib/libvirt"))
VIRTLOGD_PIDFILE = Path("/run/virtlogd.pid")
LIBVIRTD_PIDFILE = Path("/run/libvirtd.pid")
LIBVIRTD_LOG = Path("/var/log/libvirt/libvirtd.log")


class HostPrepError(Exception):
    """The node could not be prepared (a daemon did not start or did not answer)."""


def quiet_libvirt_errors() -> None:
    """Stop libvirt from printing every error to stderr; we raise them as exceptions instead."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie counts as dead: PID 1 here may never reap it)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return fields[0] not in ("Z", "X")


def _pid_named(pidfile: Path, comm: str) -> int | None:
    """The live PID written in `pidfile` if it is a process named `comm`, else None."""
    try:
        pid = int(pidfile.read_text().strip())
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ValueError):
        return None
    return pid if name == comm and pid_alive(pid) else None


def libvirt_answers(uri: str = LIBVIRT_URI) -> bool:
    """Whether a libvirt connection to `uri` opens and answers a call right now."""
    quiet_libvirt_errors()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return False
    try:
        conn.getLibVersion()
        return True
    except libvirt.libvirtError:
        return False
    finally:
        conn.close()


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def _id_free(qemu_id: int) -> bool:
    try:
        pwd.getpwuid(qemu_id)
        return False
    except KeyError:
        pass
    try:
        grp.getgrgid(qemu_id)
        return False
    except KeyError:
        return True


def ensure_qemu_user() -> None:
    """Create the `kvm` and `libvirt-qemu` groups and the `libvirt-qemu` user if missing.

    Afterwards all three exist; an existing user or group is left as it is.
    """
    fixed_id = _id_free(DEBIAN_QEMU_ID)
    if not _group_exists(KVM_GROUP):
        _run(["groupadd", "--system", KVM_GROUP])
    if not _group_exists(QEMU_GROUP):
        _run(["groupadd", "--system", *(["--gid", str(DEBIAN_QEMU_ID)] if fixed_id else []),
              QEMU_GROUP])
    try:
        pwd.getpwnam(QEMU_USER)
    except KeyError:
        _run(["useradd", "--system", *(["--uid", str(DEBIAN_QEMU_ID)] if fixed_id else []),
              "--gid", QEMU_GROUP, "--groups", KVM_GROUP, "--no-create-home",
              "--home-dir", "/var/lib/libvirt", "--shell", "/usr/sbin/nologin",
              "--comment", "Libvirt Qemu", QEMU_USER])


def ensure_qemu_in_kvm_group() -> None:
    """Make `libvirt-qemu` a member of `kvm` (a user made before the group may lack it)."""
    if QEMU_USER not in grp.getgrnam(KVM_GROUP).gr_mem:
        _run(["usermod", "--append", "--groups", KVM_GROUP, QEMU_USER])


def _user_may(path: Path, user: str, bits: tuple[int, int, int]) -> bool:
    """Whether `user` has the (owner, group, other) permission `bits` on `path`."""
    entry = pwd.getpwnam(user)
    if entry.pw_uid == 0:
        return True
    gids = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    st = path.stat()
    if st.st_uid == entry.pw_uid:
        wanted = bits[0]
    elif st.st_gid in gids:
        wanted = bits[1]
    else:
        wanted = bits[2]
    return st.st_mode & wanted == wanted


def ensure_kvm_device(device: Path = KVM_DEVICE, group: str = KVM_GROUP,
                      user: str = QEMU_USER) -> bool:
    """Give `device` udev's group and mode (`group`, 0660) and check `user` may use it.

    Returns False, changing nothing, when the device does not exist (no KVM on
    this host). After success the device belongs to `group` with mode 0660 and
    `user` may read and write it. Raises HostPrepError when that does not hold
    afterwards (e.g. a read-only /dev); the owner is never changed.
    """
    if not device.exists():
        return False
    gid = grp.getgrnam(group).gr_gid
    try:
        st = device.stat()
        if st.st_gid != gid:
            os.chown(device, -1, gid)
        if stat.S_IMODE(st.st_mode) != 0o660:
            device.chmod(0o660)
        st = device.stat()
    except OSError as e:
        raise HostPrepError(f"could not give {device} group {group} and mode 660: {e}") from e
    rw = (stat.S_IRUSR | stat.S_IWUSR, stat.S_IRGRP | stat.S_IWGRP, stat.S_IROTH | stat.S_IWOTH)
    if st.st_gid != gid or stat.S_IMODE(st.st_mode) != 0o660 or not _user_may(device, user, rw):
        raise HostPrepError(f"{device} is gid {st.st_gid} mode {stat.S_IMODE(st.st_mode):o} "
                            f"after preparation; {user} needs group {group} (mode 660) to use "
                            "it, or libvirtd probes QEMU again on every domain lookup")
    return True


def unreachable_dirs(path: Path, user: str = QEMU_USER) -> list[Path]:
    """Directories above `path` (inclusive if it is one) that `user` may not search.

    An empty list means the user can reach files there by name; only the search
    (x) bit is checked, for owner, group (primary and supplementary) or other.
    """
    entry = pwd.getpwnam(user)
    gids = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    path = path.resolve()
    dirs = [path, *path.parents] if path.is_dir() else list(path.parents)
    blocked: list[Path] = []
    for d in dirs:
        st = d.stat()
        if entry.pw_uid == 0:
            continue
        if st.st_uid == entry.pw_uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in gids:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            blocked.append(d)
    return sorted(blocked)


def _wait_pidfile(pidfile: Path, comm: str, deadline: float) -> int:
    """Poll until `pidfile` names a live `comm`; raises HostPrepError at the deadline."""
    while time.monotonic() < deadline:
        pid = _pid_named(pidfile, comm)
        if pid is not None:
            return pid
        time.sleep(0.05)
    raise HostPrepError(f"{comm} did not write {pidfile} in time{_log_tail()}")


def _log_tail(lines: int = 5) -> str:
    try:
        tail = LIBVIRTD_LOG.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return ""
    return "; last log lines: " + " | ".join(tail)


def _start_daemon(binary: str, pidfile: Path, deadline: float) -> int:
    """Start `binary -d` and return the PID it wrote to its pidfile."""
    proc = subprocess.run([binary, "-d"], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise HostPrepError(f"{binary} -d failed ({proc.returncode}): {proc.stderr.strip()}")
    return _wait_pidfile(pidfile, binary, deadline)


def ensure_libvirtd(uri: str = LIBVIRT_URI, timeout: float = 30.0) -> list[int]:
    """Make sure virtlogd and libvirtd run and `uri` answers, with /dev/kvm as udev leaves it.

    Returns the PIDs of the daemons this call started (empty when both were
    already running), so that a caller can stop exactly those with
    `stop_daemons()`. On failure raises HostPrepError and stops what it started.
    """
    deadline = time.monotonic() + timeout
    ensure_qemu_user()
    ensure_qemu_in_kvm_group()
    # also when libvirtd already runs: it re-checks the device on every domain lookup
    ensure_kvm_device()
    virtlogd_up = _pid_named(VIRTLOGD_PIDFILE, "virtlogd") is not None
    if virtlogd_up and libvirt_answers(uri):
        return []
    for d in RUN_DIRS:
        d.mkdir(parents=True, exist_ok=True)
    started: list[int] = []
    try:
        if not virtlogd_up:
            started.append(_start_daemon("virtlogd", VIRTLOGD_PIDFILE, deadline))
        libvirtd = _pid_named(LIBVIRTD_PIDFILE, "libvirtd")
        if libvirtd is None:
            libvirtd = _start_daemon("libvirtd", LIBVIRTD_PIDFILE, deadline)
            started.append(libvirtd)
        while not libvirt_answers(uri):
            # libvirtd daemonizes before its drivers start; a failing driver makes it exit.
            if not pid_alive(libvirtd):
                raise HostPrepError(f"libvirtd exited before {uri} answered{_log_tail()}")
            if time.monotonic() >= deadline:
                raise HostPrepError(f"{uri} did not answer within {timeout:.0f}s{_log_tail()}")
            time.sleep(0.1)
    except BaseException:
        stop_daemons(started)
        raise
    log.info("started libvirt daemons, PIDs %s", started)
    return started


def stop_daemons(pids: Iterable[int], timeout: float = 15.0) -> None:
    """Stop the given daemon PIDs, newest first: SIGTERM, then SIGKILL at the deadline.

    Afterwards none of them is alive (a zombie left for PID 1 counts as stopped).
    """
    for pid in reversed(list(pids)):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            log.warning("pid %d ignored SIGTERM, killing it", pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            while pid_alive(pid) and time.monotonic() < deadline + 5:
                time.sleep(0.05)


def report_lines(started: list[int]) -> list[str]:
    """What `main` prints: one line per daemon and one for /dev/kvm, each saying what it is."""
    lines = []
    for name, pidfile in (("virtlogd", VIRTLOGD_PIDFILE), ("libvirtd", LIBVIRTD_PIDFILE)):
        pid = _pid_named(pidfile, name)
        if pid is None:
            lines.append(f"{name}: not running")
        else:
            lines.append(f"{name}: {'started' if pid in started else 'already running'}, "
                         f"pid {pid}")
    if KVM_DEVICE.exists():
        st = KVM_DEVICE.stat()
        lines.append(f"{KVM_DEVICE}: group {grp.getgrgid(st.st_gid).gr_name}, "
                     f"mode {stat.S_IMODE(st.st_mode):04o}")
    else:
        lines.append(f"{KVM_DEVICE}: absent (VMs run under QEMU emulation)")
    return lines


def main() -> int:
    """`python -m agent.hostprep`: start what is missing, then say what runs and how."""
    try:
        started = ensure_libvirtd()
    except (HostPrepError, subprocess.SubprocessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(report_lines(started)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
