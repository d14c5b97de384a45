"""Xen Orchestra's XAPI client (npm `xen-api` 4.7.6) against the XAPI simulator: if
Vates' client disagrees with the simulator, the simulator is wrong. The same scenarios
as our client's tests: redirect, events, re-login, EVENTS_LOST, vanished tasks, int64
on both wires and the JSON-RPC → XML-RPC fallback. (Master failover is not in 4.7.6.)

The simulator runs with `stable_refs` here: XO keeps refs across sessions, as real XAPI
allows (with per-session refs, XO's first call after a re-login, `event.inject` on the
pool's old ref, fails HANDLE_INVALID and its event loop stalls)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.xapi_sim.process import SimProcess

pytestmark = pytest.mark.integration

XO = Path(__file__).resolve().parents[1] / "xapi_sim" / "xo"
WAIT = 60.0  # an upper bound on each wait for the client, never reached when it works
TiB = 1024**4
Line = dict[str, Any]


class XoProbe:
    """xo_probe.mjs connected to a simulated pool; reads what XO's client reports."""

    def __init__(self, sim: SimProcess, folder: Path, member: int = 0) -> None:
        bundle = folder / "xo-ca.pem"
        bundle.write_text("".join(m.cert_pem for m in sim.members))
        env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(bundle)}
        self.log = open(folder / "xo-probe.log", "w+b")  # closed in stop()
        self.process = subprocess.Popen(
            ["node", str(XO / "xo_probe.mjs"), sim.url(member), "root", "secret"],
            cwd=XO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        self.buffer = b""
        self.seen: list[Line] = []

    def _line(self, deadline: float) -> Line:
        assert self.process.stdout is not None
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([self.process.stdout], [], [],
                                        max(0.0, deadline - time.monotonic()))
            chunk = os.read(self.process.stdout.fileno(), 65536) if ready else b""
            if not chunk:
                self.log.seek(0)
                raise AssertionError("XO's client said nothing more; it saw "
                                     f"{self.seen}; stderr: {self.log.read().decode()}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        self.seen.append(json.loads(line))
        return self.seen[-1]

    def until(self, wanted: Callable[[Line], bool]) -> Line:
        """The next line `wanted` accepts (earlier ones are kept in `seen`)."""
        deadline = time.monotonic() + WAIT
        while not wanted(line := self._line(deadline)):
            pass
        return line

    def ask(self, command: str, answer: str = "object") -> Line:
        """Send `command`; the next line of kind `answer`."""
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        self.process.stdin.flush()
        return self.until(lambda line: line["kind"] == answer)

    def put(self, vdi: str, path: Path) -> Line:
        """What XO's putResource of file `path` into VDI `vdi` answered."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"put {vdi} {path}\n".encode())
        self.process.stdin.flush()
        return self.until(lambda line: line["kind"] == "put")

    def stop(self) -> None:
        """Ask the probe to quit (it logs out); ended by its PID if it does not."""
        assert self.process.stdin is not None
        if self.process.poll() is None:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.write(b"quit\n")
                self.process.stdin.flush()
            try:
                self.process.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.log.close()


@pytest.fixture
def xo(tmp_path: Path) -> Iterator[Callable[..., XoProbe]]:
    """A maker of probes (sim, member); each stopped after the test."""
    if shutil.which("node") is None or not (XO / "node_modules" / "xen-api").is_dir():
        pytest.skip("Xen Orchestra's client is not installed (make test runs npm ci in "
                    "tests/xapi_sim/xo, with Debian's nodejs)")
    made: list[XoProbe] = []

    def make(sim: SimProcess, member: int = 0) -> XoProbe:
        folder = tmp_path / f"xo-{len(made)}"
        folder.mkdir()
        made.append(XoProbe(sim, folder, member))
        return made[-1]

    yield make
    for probe in made:
        probe.stop()


def _is(kind: str, uuid: str, name: str | None = None) -> Callable[[Line], bool]:
    return lambda line: (line["kind"] == kind and line["uuid"] == uuid
                         and (name is None or line["name"] == name))


def test_xo_follows_host_is_slave_and_reads_what_the_pool_holds(
        sim_pools: Callable[..., SimProcess], xo: Callable[..., XoProbe]) -> None:
    sim = sim_pools(stable_refs=True)
    probe = xo(sim, member=1)
    ready = probe.until(lambda line: line["kind"] == "ready")
    assert ready["host"] == sim.members[0].address
    # VMs: the control domain and the template "Other install media"
    assert ready["counts"] == {"pool": 1, "host": 2, "host_metrics": 2, "SR": 1, "SM": 1,
                               "network": 1, "VM": 2}


def test_xo_sees_a_vm_added_changed_removed(
        sim_pools: Callable[..., SimProcess], xo: Callable[..., XoProbe]) -> None:
    sim = sim_pools(stable_refs=True)
    probe = xo(sim)
    probe.until(lambda line: line["kind"] == "ready")
    vm = sim.store.add("VM", {"name_label": "first"})
    probe.until(_is("add", vm, "first"))
    sim.store.modify("VM", vm, name_label="second")
    probe.until(lambda line: line["kind"] in ("add", "update") and line["uuid"] == vm
                and line["name"] == "second")
    sim.store.remove("VM", vm)
    probe.until(_is("remove", vm))


def test_xo_logs_in_again_after_session_expiry_and_goes_on(
        sim_pools: Callable[..., SimProcess], xo: Callable[..., XoProbe]) -> None:
    sim = sim_pools(stable_refs=True)
    probe = xo(sim)
    probe.until(lambda line: line["kind"] == "ready")
    logins = len(sim.store.logins)
    sim.store.wait_blocked(1)
    sim.store.expire_sessions()
    probe.until(lambda line: line["kind"] == "session")
    vm = sim.store.add("VM", {"name_label": "after expiry"})
    probe.until(_is("add", vm, "after expiry"))
    assert len(sim.store.logins) == logins + 1
    assert not any(line["kind"] == "remove" for line in probe.seen)


def test_xo_reads_everything_again_on_events_lost(
        sim_pools: Callable[..., SimProcess], xo: Callable[..., XoProbe]) -> None:
    sim = sim_pools(stable_refs=True)
    store = sim.store
    gone, kept = store.add("VM", {"name_label": "gone"}), store.add("VM", {"name_label": "k"})
    probe = xo(sim)
    probe.until(lambda line: line["kind"] == "ready")
    store.wait_blocked(1)
    with sim.batch():
        store.remove("VM", gone)
        store.modify("VM", kept, name_label="renamed")
        added = store.add("VM", {"name_label": "added"})
        store.lose_events()
    wanted = {("remove", gone), ("update", kept), ("add", added)}
    while wanted:
        line = probe.until(lambda line: (line["kind"], line["uuid"]) in wanted)
        wanted.discard((line["kind"], line["uuid"]))
    assert probe.ask(f"get VM {kept}")["value"]["name_label"] == "renamed"


def test_xo_drops_tasks_that_vanish_with_a_toolstack_restart(
        sim_pools: Callable[..., SimProcess], xo: Callable[..., XoProbe]) -> None:
    sim = sim_pools(stable_refs=True)
    task = sim.store.add("task", {"name_label": "Async.VM.start"})
    probe = xo(sim)
    probe.until(lambda line: line["kind"] == "ready")
    sim.restart_toolstack()
    probe.until(_is("remove", task))


@pytest.mark.parametrize(("jsonrpc", "size"), [(True, 5 * TiB), (False, str(5 * TiB))])
def test_xo_reads_int64_on_either_wire(sim_pools: Callable[..., SimProcess],
                                       xo: Callable[..., XoProbe], jsonrpc: bool,
                                       size: int | str) -> None:
    # JSON-RPC carries numbers; XML-RPC strings of digits, which XO passes on as they are.
    # jsonrpc=False: XO finds /jsonrpc answering text/xml and falls back to XML-RPC
    sim = sim_pools(jsonrpc=jsonrpc, stable_refs=True)
    vdi = sim.store.add("VDI", {"name_label": "big", "SR": sim.sr, "virtual_size": 5 * TiB})
    probe = xo(sim)
    probe.until(lambda line: line["kind"] == "ready")
    assert probe.ask(f"get VDI {vdi}")["value"]["virtual_size"] == size
    calls = sim.store.calls
    assert calls["VDI.get_all_records"] >= 1


def test_xo_runs_async_calls_to_their_task_results_and_errors(
        sim_pools: Callable[..., SimProcess], xo: Callable[..., XoProbe]) -> None:
    """XO parses a task's result with its own XML-RPC parser (over JSON-RPC too) and
    raises a failed task's error_info as the call's error."""
    sim = sim_pools(stable_refs=True)
    probe = xo(sim)
    probe.until(lambda line: line["kind"] == "ready")
    clone = probe.ask(f'async VM.clone {sim.template} "xo-clone"', "result")
    assert str(clone["value"]).startswith("OpaqueRef:")
    (vm,) = sim.store.live("VM") - {sim.template} - {
        v for v in sim.store.live("VM") if sim.store.field("VM", v, "is_control_domain")}
    assert sim.store.field("VM", vm, "name_label") == "xo-clone"
    sim.fail_next("VM.provision", "SR_BACKEND_FAILURE_44", "", "full", "")
    failed = probe.ask(f"async VM.provision {vm}", "result")
    assert (failed["code"], failed["params"]) == ("SR_BACKEND_FAILURE_44", ["", "full", ""])
    probe.until(lambda line: line["kind"] == "remove" and sim.store.live("task") == set())


def test_xo_puts_a_vdi_s_content_through_the_redirect(
        sim_pools: Callable[..., SimProcess], xo: Callable[..., XoProbe],
        tmp_path: Path) -> None:
    # XO probes with an empty PUT, follows the 302 to the member, PUTs the body there
    # (session and task in the query) and waits on the task through its events
    sim = sim_pools(stable_refs=True)
    vdi = sim.store.add("VDI", {"name_label": "xo-put", "SR": sim.sr, "virtual_size": 2**21})
    data = bytes(range(256)) * 4096
    (tmp_path / "body").write_bytes(data)
    sim.import_redirect(1)
    probe = xo(sim)
    probe.until(lambda line: line["kind"] == "ready")
    answer = probe.put(vdi, tmp_path / "body")
    assert str(answer.get("result", answer)).startswith("OpaqueRef:"), answer
    assert sim.vdi_file(vdi).read_bytes() == data + bytes(2**21 - len(data))
    assert [t["member"] for t in sim.transfers] == [sim.members[1].address]
