"""What a pool agent reports of its pool: hosts, their memory and CPUs, from the cache only.

The region sees a pool as one node: its CPUs and memory are the sums over the hosts
that are enabled and live, and `largest_free_mib` lets the scheduler refuse a VM that
no single host can take. Nothing here calls the pool: the event loop keeps the cache.
"""

from __future__ import annotations

from typing import Any

from agent.drivers.xapi.events import PoolCache
from agent.protocol import XapiHost, XapiPoolInfo

MiB = 1024 * 1024


def _int(value: Any) -> int:
    """An XAPI int (a decimal string over XML-RPC), 0 when it is none."""
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def _host(uuid: str, rec: dict[str, Any], metrics: dict[str, Any] | None,
          master_uuid: str) -> XapiHost:
    cpu_info = rec.get("cpu_info") if isinstance(rec.get("cpu_info"), dict) else {}
    return XapiHost(
        uuid=uuid, name=str(rec.get("name_label", ""))[:255],
        address=str(rec.get("address", ""))[:255], enabled=bool(rec.get("enabled")),
        live=bool(metrics and metrics.get("live")), master=uuid == master_uuid,
        cpus=_int((cpu_info or {}).get("cpu_count")),
        memory_total_mib=_int(metrics.get("memory_total")) // MiB if metrics else 0,
        memory_free_mib=_int(metrics.get("memory_free")) // MiB if metrics else 0)


def pool_info(cache: PoolCache, pool_uuid: str, master_address: str) -> XapiPoolInfo:
    """The pool as the cache holds it; `reachable` False (with the cache's problem) when
    the cache is not current. Hosts sorted by address."""
    pools = cache.all("pool")
    pool = pools.get(pool_uuid) or {}
    master_uuid = str(pool.get("master") or "")
    metrics = cache.all("host_metrics")
    hosts = sorted((_host(u, r, metrics.get(str(r.get("metrics"))), master_uuid)
                    for u, r in cache.all("host").items()), key=lambda h: h.address)
    usable = [h for h in hosts if h.enabled and h.live]
    return XapiPoolInfo(
        uuid=pool_uuid, name=str(pool.get("name_label", ""))[:255], reachable=cache.valid,
        problem="" if cache.valid else cache.problem[:2000], master_uuid=master_uuid,
        master_address=master_address, hosts=hosts[:64],
        largest_free_mib=max((h.memory_free_mib for h in usable), default=0))

