"""The whole suite as `make test` runs it, in two stages on this machine's two cores.

Stage 1 runs the appliance ISO's tests (a QEMU guest installing, booting and being
upgraded: mostly the emulated CPU's time) beside the unit and functional tests, then the
XAPI simulator's integration tests (one Python process and its databases, the
simulator's processes), each in a pytest of its own; stage 2 runs the rest,
whose VMs, Ceph, lab nodes and browser need the machine to themselves. Each stage's
tests share nothing with the other's of that stage: no libvirtd (the ISO tests' own
controller has no node), no database, no port, each its own temporary folder.

Every test runs, once; the exit status is that of the first pytest that failed, and the
ISO tests' output is printed whole once they end.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--durations=25"]
# run beside stage 1's main pytest: the ISO's tests (about as long as the main pytest)
BESIDE = ["tests/iso"]
# stage 1's main pytest: then those of the XCP-ng pool client and drivers against the
# XAPI simulator (loopback processes of their own: no libvirtd, Ceph or database)
STAGE_1 = ["tests/unit", "tests/functional", *sorted(
    str(p.relative_to(REPO)) for pattern in ("test_xapi_*.py", "test_xcpng_*.py")
    for p in (REPO / "tests/integration").glob(pattern))]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="vs-", ignore_cleanup_errors=True) as work, \
            open(Path(work) / "iso.log", "w+") as iso_log:
        beside = subprocess.Popen([*PYTEST, f"--basetemp={work}/iso", *BESIDE], cwd=REPO,
                                  stdout=iso_log, stderr=subprocess.STDOUT)
        try:
            first = subprocess.run([*PYTEST, f"--basetemp={work}/s1", *STAGE_1],
                                   cwd=REPO, check=False).returncode
        finally:
            iso = beside.wait()
            iso_log.seek(0)
            sys.stdout.write(iso_log.read())
            sys.stdout.flush()
        rest = [f"--ignore={path}" for path in (*BESIDE, *STAGE_1)]
        second = subprocess.run([*PYTEST, f"--basetemp={work}/s2", *rest, "tests"],
                                cwd=REPO, check=False).returncode
    return next((rc for rc in (first, iso, second) if rc != 0), 0)


if __name__ == "__main__":
    sys.exit(main())
