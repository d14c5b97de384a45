"""The whole suite as `make test` runs it, in two stages on this machine's two cores, each
stage two pytests side by side.

Stage 1 runs the appliance ISO's tests (a QEMU guest installing, booting and being
upgraded: mostly the emulated CPU's time) beside the unit and functional tests, then the
XAPI simulator's integration tests (one Python process and its databases, the
simulator's processes). Stage 2 runs the lab's tests (nodes in containers on a bridge of
their own, their own Ceph and controller) beside the rest (this host's libvirtd, Ceph,
network namespaces and browser): a TCG guest keeps one core busy while the other mostly
waits, so each side has a core. The two pytests of a stage share nothing: no libvirtd
(the ISO tests' own controller has no node; the lab's nodes run their own), no
database, no port, each its own temporary folder.

Every test runs, once; the exit status is that of the first pytest that failed, and the
side pytest's output is printed whole once it ends.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--durations=25"]
# stage 1: the ISO's tests beside the rest (about as long as they are)
ISO = ["tests/iso"]
STAGE_1 = ["tests/unit", "tests/functional", *sorted(
    str(p.relative_to(REPO)) for pattern in ("test_xapi_*.py", "test_xcpng_*.py")
    for p in (REPO / "tests/integration").glob(pattern))]
# stage 2: the lab's tests beside every test not named above
LAB = ["tests/lab"]


def side_by_side(work: Path, name: str, side: list[str], main: list[str]) -> tuple[int, int]:
    """Run pytest on `side` (its output kept in a file) and on `main` at once; both exit
    statuses, the side's output printed after the main's."""
    with open(work / f"{name}.log", "w+") as log:
        other = subprocess.Popen([*PYTEST, f"--basetemp={work}/{name}-side", *side],
                                 cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            first = subprocess.run([*PYTEST, f"--basetemp={work}/{name}", *main],
                                   cwd=REPO, check=False).returncode
        finally:
            second = other.wait()
            log.seek(0)
            sys.stdout.write(log.read())
            sys.stdout.flush()
    return first, second


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="vs-", ignore_cleanup_errors=True) as folder:
        work = Path(folder)
        statuses = side_by_side(work, "s1", ISO, STAGE_1)
        rest = [f"--ignore={path}" for path in (*ISO, *STAGE_1, *LAB)]
        statuses += side_by_side(work, "s2", LAB, [*rest, "tests"])
    return next((rc for rc in statuses if rc != 0), 0)


if __name__ == "__main__":
    sys.exit(main())
