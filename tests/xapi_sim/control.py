"""The simulator's control socket: how a test changes the pool and flips faults.

One JSON line per connection, `{"op": NAME, "args": [...]}`, answered by one JSON line,
`{"value": ...}` or `{"error": "..."}`. `batch` runs several ops under the pool's lock,
so that `event.from` sees them as one step. Served on a unix socket in the test's
temporary folder: nothing else can reach it.
"""

from __future__ import annotations

import json
import socketserver
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.xapi_sim import console, disks, tasks
from tests.xapi_sim.server import SimPool

WAIT_LIMIT = 600.0  # a bound on wait_blocked, never reached when the client works

Op = Callable[..., Any]


def _wait_blocked(pool: SimPool, count: int) -> bool:
    """Wait until `count` event.from calls are blocked; whether they were."""
    store = pool.store
    with store.waiting:
        return store.waiting.wait_for(lambda: store.waiters >= count, WAIT_LIMIT)


def _info(pool: SimPool) -> dict[str, Any]:
    return {"port": pool.port, "sr": pool.sr, "network": pool.network,
            "template": pool.template,
            "master": pool.members.index(pool.master),
            "members": [{"address": m.address, "fingerprint": m.fingerprint,
                         "host_uuid": m.host_uuid, "cert_pem": m.cert_pem}
                        for m in pool.members]}


def operations(pool: SimPool) -> dict[str, Op]:
    """Every op a test may ask for, by name."""
    store = pool.store
    return {
        "info": lambda: _info(pool),
        "add": lambda cls, fields, uuid: store.add(cls, fields, uuid),
        "modify": lambda cls, uuid, fields: store.modify(cls, uuid, **fields),
        "remove": store.remove,
        "vanish": store.vanish,
        "expire_sessions": store.expire_sessions,
        "lose_events": store.lose_events,
        "logins": lambda: store.logins,
        "sessions": lambda: len(store.sessions),
        "calls": lambda: dict(store.calls),
        "field": lambda cls, uuid, name: store.objects[(cls, uuid)].fields[name],
        "live": lambda cls: [o.uuid for o in store.live(cls)],
        "wait_blocked": lambda count: _wait_blocked(pool, count),
        "requests": lambda member: pool.members[member].requests,
        "rekey": lambda member, expired=False, names=None:
            pool.members[member].rekey(expired, names),
        "stop_member": lambda member: pool.members[member].stop(),
        "switch_master": pool.switch_master,
        "eject": pool.eject,
        "restart_toolstack": pool.restart_toolstack,
        "hold": lambda method: tasks.hold(store, method),
        "release": lambda method: tasks.release(store, method),
        "wait_tasks": lambda method, count: tasks.wait_tasks(store, method, count,
                                                             WAIT_LIMIT),
        "fail_next": lambda method, description: _set_fault(
            pool, lambda f: f.fail_next.__setitem__(method, list(description))),
        "guest_ignores_shutdown": lambda flag: _set_fault(
            pool, lambda f: setattr(f, "guest_ignores_shutdown", bool(flag))),
        "host_memory": lambda size: _set_fault(
            pool, lambda f: setattr(f, "host_memory", int(size))),
        "vdi_file": lambda uuid: str(disks.vdi_file(store, uuid)),
        "import_redirect": lambda member: setattr(pool, "import_redirect", member),
        "transfers": lambda: pool.transfers,
        "add_console": lambda vm: console.add_console(pool, vm),
    }


def _set_fault(pool: SimPool, change: Callable[[Any], None]) -> None:
    with pool.store.cond:
        change(pool.store.faults)
        pool.store.cond.notify_all()


def _run(ops: dict[str, Op], pool: SimPool, request: dict[str, Any]) -> Any:
    op, args = request["op"], request.get("args", [])
    if op == "batch":
        with pool.store.cond:
            return [ops[name](*step_args) for name, step_args in args]
    return ops[op](*args)


class ControlServer(socketserver.ThreadingUnixStreamServer):
    """Answers control requests for `pool` on the unix socket `path`."""

    daemon_threads = True

    def __init__(self, path: Path, pool: SimPool) -> None:
        self.pool, self.ops = pool, operations(pool)
        super().__init__(str(path), _ControlHandler)


class _ControlHandler(socketserver.StreamRequestHandler):
    server: ControlServer

    def handle(self) -> None:
        line = self.rfile.readline()
        try:
            answer = {"value": _run(self.server.ops, self.server.pool, json.loads(line))}
        except Exception as e:  # noqa: BLE001 - the test reads the error, the sim goes on
            answer = {"error": f"{type(e).__name__}: {e}"}
        self.wfile.write(json.dumps(answer).encode() + b"\n")
