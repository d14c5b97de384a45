"""Memory, hugepage pools and NUMA nodes, from /proc/meminfo and /sys/devices/system/node."""

from __future__ import annotations

import re

from hardware.model import HugepagePool, MemoryInfo, NumaNode
from hardware.sysfs import Root, parse_cpulist

_NODE_TOTAL = re.compile(r"MemTotal:\s+(\d+)\s*kB")


def _meminfo_kib(text: str, key: str) -> int:
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def probe_memory(root: Root) -> MemoryInfo:
    text = root.read("proc/meminfo") or ""
    pools = []
    for entry in root.entries("sys/kernel/mm/hugepages"):
        match = re.fullmatch(r"hugepages-(\d+)kB", entry)
        if match is None:
            continue
        base = f"sys/kernel/mm/hugepages/{entry}"
        pools.append(HugepagePool(
            size_kib=int(match.group(1)),
            total=root.read_int(f"{base}/nr_hugepages", 0) or 0,
            free=root.read_int(f"{base}/free_hugepages", 0) or 0,
        ))
    return MemoryInfo(
        total_mib=_meminfo_kib(text, "MemTotal") // 1024,
        available_mib=_meminfo_kib(text, "MemAvailable") // 1024,
        hugepages=sorted(pools, key=lambda p: p.size_kib),
    )


def probe_numa(root: Root) -> list[NumaNode]:
    """NUMA nodes with their CPUs and memory; a kernel without NUMA gives []."""
    nodes = []
    for entry in root.entries("sys/devices/system/node"):
        if not re.fullmatch(r"node\d+", entry):
            continue
        base = f"sys/devices/system/node/{entry}"
        total = _NODE_TOTAL.search(root.read(f"{base}/meminfo", "") or "")
        nodes.append(NumaNode(
            id=int(entry[4:]),
            cpus=parse_cpulist(root.read(f"{base}/cpulist", "") or ""),
            memory_mib=int(total.group(1)) // 1024 if total else 0,
        ))
    return sorted(nodes, key=lambda n: n.id)
