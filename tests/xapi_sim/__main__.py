"""`python -m tests.xapi_sim --folder DIR [--hosts N] [--no-jsonrpc] [--stable-refs]`.

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

from tests.xapi_sim.control import ControlServer
from tests.xapi_sim.server import SimPool


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.xapi_sim")
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--no-jsonrpc", action="store_true")
    parser.add_argument("--stable-refs", action="store_true")
    args = parser.parse_args()
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # every thread: sigwait gets them
    pool = SimPool(args.folder, hosts=args.hosts, jsonrpc=not args.no_jsonrpc,
                   stable_refs=args.stable_refs)
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
