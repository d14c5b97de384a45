"""`python -m tests.xapi_sim --folder DIR [--hosts N] [--no-jsonrpc] [--stable-refs]
[--xl-image DIR --xl-port PORT --xl-initrd FILE]`.

With the --xl-* options the pool's guests are PV guests in a Xen dom0 booted by the
caller (tests/xapi_sim/backend_xl.py), reached over SSH on 127.0.0.1:PORT.

Prints one JSON line `{"pid", "control"}` once every listener and the control socket
accept connections, then serves until SIGTERM (or SIGINT), which stops the listeners,
ends every session and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from tests.xapi_sim.backend_xl import XenGuests, XlBackend, XlDom0
from tests.xapi_sim.control import ControlServer
from tests.xapi_sim.dom0 import Dom0Image
from tests.xapi_sim.server import SimPool


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.xapi_sim")
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--no-jsonrpc", action="store_true")
    parser.add_argument("--stable-refs", action="store_true")
    parser.add_argument("--xl-image", type=Path, help="the dom0 image's folder")
    parser.add_argument("--xl-port", type=int, help="dom0's SSH port on 127.0.0.1")
    parser.add_argument("--xl-initrd", type=Path, help="the guests' initramfs")
    args = parser.parse_args()
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # every thread: sigwait gets them
    backend = None
    if args.xl_image is not None:
        dom0 = XlDom0.attached(Dom0Image(args.xl_image), args.xl_port)
        backend = XenGuests(XlBackend(dom0, args.xl_initrd))
    pool = SimPool(args.folder, hosts=args.hosts, jsonrpc=not args.no_jsonrpc,
                   stable_refs=args.stable_refs, backend=backend)
    pool.start()
    control_path = args.folder / "control.sock"
    control = ControlServer(control_path, pool)
    server = threading.Thread(target=control.serve_forever, name="xapi-sim-control")
    server.start()
    print(json.dumps({"pid": os.getpid(), "control": str(control_path)}), flush=True)
    signal.sigwait(stop_signals)
    closing = threading.Thread(target=control.shutdown)  # beside pool.stop: both poll
    closing.start()
    pool.stop()
    closing.join()
    server.join()
    control.server_close()
    control_path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
