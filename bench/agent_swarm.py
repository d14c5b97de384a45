"""Simulated agents for bench/controller_scale.py: real mTLS clients in one asyncio process.

    python bench/agent_swarm.py SPEC.json

SPEC names the controller URL, the region CA, and per node its id, certificate, key,
source address and status report (JSON, `sent_at` replaced on every send). Each
simulated agent does what `agent.daemon.Agent` does on the wire: one connection
long-polls `GET /agent/v1/nodes/<id>/desired?after=G&wait=W` (W as the controller
names it once it has; a 204 is a wait that ended with nothing new) and takes every new
generation at once; a second connection posts the status at the interval the
controller names in its answers (at least `heartbeat_s`, spread by ±10%, the first one
at a random phase) and at once after a new generation.

Lines on stdout, one JSON object each: {"connected": n} every 10 s until {"ready": n}
once every agent has its first desired state; {"all_reported": n} once every agent's
first status report was taken (the region has settled); {"all_have": g} once every agent has
generation g; then, when stdin is closed, a summary: per generation the time (wall
clock) each agent received it, the count of failed requests by cause, and the requests
a second of each kind (long-polls, status reports) made since all were ready.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.protocol import (  # noqa: E402
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    pace_from_headers,
)
from agent.retry import controller_retry_delay  # noqa: E402

RAMP_PER_S = 400  # new agents started per second: the server's accept backlog is finite


@dataclass
class Swarm:
    url: str
    ca_pem: str
    heartbeat_s: float
    poll_wait_s: float
    received: dict[int, list[float]] = field(default_factory=dict)  # generation -> times
    errors: Counter[str] = field(default_factory=Counter)
    sent: Counter[str] = field(default_factory=Counter)  # requests made once all were ready
    first_seen: int = 0
    all_ready: asyncio.Event = field(default_factory=asyncio.Event)
    first_reports: int = 0  # agents whose first status report was taken
    total: int = 0

    def got(self, generation: int, first: bool) -> None:
        times = self.received.setdefault(generation, [])
        times.append(time.time())
        if len(times) == self.total and not first:  # a change reached every agent
            print(json.dumps({"all_have": generation}), flush=True)
        if first:
            self.first_seen += 1
            if self.first_seen == self.total:
                self.all_ready.set()


@dataclass
class Pace:
    """The report interval and poll wait one simulated agent follows, as the controller
    last named them."""

    floor_s: float
    poll_wait_s: float
    told_s: float | None = None

    def take(self, r: aiohttp.ClientResponse) -> None:
        told, wait = pace_from_headers(r.headers)
        self.told_s = told or self.told_s
        self.poll_wait_s = wait or self.poll_wait_s

    def interval_s(self) -> float:
        return max(self.floor_s, self.told_s or 0.0) * random.uniform(0.9, 1.1)

    def retry_delay_s(self, failures: int) -> float:
        """The real agent's wait after `failures` failed requests in a row."""
        return controller_retry_delay(failures, self.told_s, random.random)


def _context(ca_pem: str, cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca_pem)
    ctx.load_cert_chain(cert, key)
    return ctx


async def _agent(swarm: Swarm, node: dict[str, Any], stop: asyncio.Event) -> None:
    ctx = _context(swarm.ca_pem, node["cert"], node["key"])
    # idle connections kept as long as the controller keeps those of nodes (its report
    # interval grows with the region), as urllib3 in the real agent does
    connector = aiohttp.TCPConnector(ssl=ctx, local_addr=(node["source"], 0), limit=2,
                                     keepalive_timeout=900)
    base = f"{swarm.url}/agent/v1/nodes/{node['id']}"
    report_now = asyncio.Event()
    pace = Pace(swarm.heartbeat_s, swarm.poll_wait_s)
    async with aiohttp.ClientSession(connector=connector,
                                     headers={PROTOCOL_HEADER: str(PROTOCOL_VERSION)}) as http:
        poller = asyncio.create_task(_poll(swarm, http, base, pace, report_now, stop))
        reporter = asyncio.create_task(_report(swarm, http, base, node["status"], pace,
                                               report_now, stop))
        await stop.wait()
        for task in (poller, reporter):
            task.cancel()
        await asyncio.gather(poller, reporter, return_exceptions=True)


async def _poll(swarm: Swarm, http: aiohttp.ClientSession, base: str, pace: Pace,
                report_now: asyncio.Event, stop: asyncio.Event) -> None:
    after, first, failures = -1, True, 0
    while not stop.is_set():
        timeout = aiohttp.ClientTimeout(total=pace.poll_wait_s + 60)
        try:
            swarm.sent["desired"] += swarm.all_ready.is_set()
            async with http.get(f"{base}/desired", timeout=timeout,
                                params={"after": after, "wait": pace.poll_wait_s}) as r:
                body = await r.read()
                pace.take(r)
                if r.status == 204:
                    failures = 0
                    continue  # the wait ended with nothing new
                if r.status != 200:
                    swarm.errors[f"desired {r.status}"] += 1
                    failures += 1
                    await asyncio.sleep(pace.retry_delay_s(failures))
                    continue
        except (aiohttp.ClientError, TimeoutError) as e:
            swarm.errors[f"desired {type(e).__name__}"] += 1
            failures += 1
            await asyncio.sleep(pace.retry_delay_s(failures))
            continue
        failures = 0
        generation = json.loads(body)["generation"]
        if generation > after:
            swarm.got(generation, first)
            after, first = generation, False
            report_now.set()


async def _report(swarm: Swarm, http: aiohttp.ClientSession, base: str, status: str,
                  pace: Pace, report_now: asyncio.Event, stop: asyncio.Event) -> None:
    timeout = aiohttp.ClientTimeout(total=60)
    reported, failures = False, 0
    await asyncio.sleep(random.uniform(0, swarm.heartbeat_s))
    while not stop.is_set():
        # measurements move on every report, as a real node's free space does
        body = status.replace("SENT_AT", datetime.now(UTC).isoformat()).replace(
            '"FREE_BYTES"', str(random.randrange(10**11, 2 * 10**11)))
        swarm.sent["status"] += swarm.all_ready.is_set()
        try:
            async with http.post(f"{base}/status", data=body, timeout=timeout,
                                 headers={"Content-Type": "application/json"}) as r:
                await r.read()
                pace.take(r)
                if r.status != 204:
                    swarm.errors[f"status {r.status}"] += 1
                    failures += 1
                else:
                    failures = 0
                if r.status == 204 and not reported:
                    reported = True
                    swarm.first_reports += 1
                    if swarm.first_reports == swarm.total:
                        print(json.dumps({"all_reported": swarm.total}), flush=True)
        except (aiohttp.ClientError, TimeoutError) as e:
            swarm.errors[f"status {type(e).__name__}"] += 1
            failures += 1
        if failures:  # the real agent sends the undelivered status again after its wait
            await asyncio.sleep(pace.retry_delay_s(failures))
            continue
        try:
            await asyncio.wait_for(report_now.wait(), pace.interval_s())
        except TimeoutError:
            pass
        report_now.clear()


async def _stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)


async def main(spec_path: str) -> None:
    spec = json.loads(open(spec_path).read())
    swarm = Swarm(url=spec["url"], ca_pem=spec["ca_pem"], heartbeat_s=spec["heartbeat_s"],
                  poll_wait_s=spec["poll_wait_s"], total=len(spec["nodes"]))
    stop = asyncio.Event()
    agents = []
    for i, node in enumerate(spec["nodes"]):
        agents.append(asyncio.create_task(_agent(swarm, node, stop)))
        if i % RAMP_PER_S == RAMP_PER_S - 1:
            await asyncio.sleep(1.0)
    while True:  # progress every 10 s until every agent has had its first desired state
        try:
            await asyncio.wait_for(swarm.all_ready.wait(), 10)
            break
        except TimeoutError:
            print(json.dumps({"connected": swarm.first_seen, "errors": dict(swarm.errors)}),
                  flush=True)
    print(json.dumps({"ready": swarm.total, "errors": dict(swarm.errors)}), flush=True)
    ready_at = time.monotonic()
    await _stdin_closed()
    stop.set()
    span_s = time.monotonic() - ready_at
    await asyncio.gather(*agents, return_exceptions=True)
    print(json.dumps({"received": {str(g): t for g, t in swarm.received.items()},
                      "errors": dict(swarm.errors),
                      "per_s": {k: v / span_s for k, v in swarm.sent.items()}}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
