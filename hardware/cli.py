"""vauban-hw: what this server is made of, and whether it is fit to be a node.

    vauban-hw report [--profile NAME|FILE] [--json] [--kvm-probe] [--root DIR]
    vauban-hw inventory [--root DIR]
    vauban-hw record DIR

`report` exits 0 when nothing FAILs, 1 when a check FAILs, 2 on bad input, so
the ISO installer can use it as its pre-flight.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hardware.discover import discover
from hardware.kvm_bmc import KvmBootProbe
from hardware.model import HardwareInventory, QualificationReport
from hardware.qualify import ProfileError, load_profile, qualify
from hardware.record import record
from hardware.sysfs import Root


def kvm_boot_probe() -> tuple[bool, str]:
    """Boot a tiny guest under KVM (the agent's own probe)."""
    from hardware.kvmprobe import probe_kvm

    result = probe_kvm()
    return result.usable, result.detail


def print_report(inv: HardwareInventory, report: QualificationReport) -> None:
    cpu, mem = inv.cpu, inv.memory
    print(f"CPU     {cpu.model}: {cpu.sockets} sockets, {cpu.cores} cores, {cpu.threads} threads")
    print(f"Memory  {mem.total_mib // 1024} GiB, {len(inv.numa)} NUMA nodes")
    print(f"Disks   {', '.join(d.name for d in inv.disks) or 'none'}")
    print(f"NICs    {', '.join(n.name for n in inv.nics if n.physical) or 'none'}")
    print(f"GPUs    {', '.join(f'{g.address} {g.model}' for g in inv.gpus) or 'none'}")
    print(f"\nProfile {report.profile}:")
    for line in report.results:
        print(f"  {line.verdict.value:<4}  {line.check:<24} {line.reason}")
    print(f"\nVerdict: {report.verdict.value}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vauban-hw", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    rep = sub.add_parser("report", help="check this server against a requirement profile")
    rep.add_argument("--profile", default="compute", help="profile name or YAML file")
    rep.add_argument("--json", action="store_true", help="print inventory and report as JSON")
    rep.add_argument("--kvm-probe", action="store_true",
                     help="boot a tiny guest to prove KVM works (live root only)")
    inv = sub.add_parser("inventory", help="print the hardware inventory as JSON")
    for p in (rep, inv):
        p.add_argument("--root", default="/", help="read a recorded tree instead of this host")
    rec = sub.add_parser("record", help="record what the probes read, for a bug report")
    rec.add_argument("dest", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "record":
        if args.dest.exists() and any(args.dest.iterdir()):
            print(f"vauban-hw: {args.dest} is not empty", file=sys.stderr)
            return 2
        print(f"recorded {record(Root('/'), args.dest)} paths into {args.dest}")
        return 0
    root = Root(args.root)
    if not root.path.is_dir():
        print(f"vauban-hw: --root {args.root} is not a directory", file=sys.stderr)
        return 2
    if args.cmd == "inventory":
        print(discover(root).model_dump_json(indent=2))
        return 0
    try:
        profile = load_profile(args.profile)
    except ProfileError as e:
        print(f"vauban-hw: {e}", file=sys.stderr)
        return 2
    if args.kvm_probe and args.root != "/":
        print("vauban-hw: --kvm-probe boots a guest on this host; it needs --root /",
              file=sys.stderr)
        return 2
    probe: KvmBootProbe | None = kvm_boot_probe if args.kvm_probe else None
    inventory = discover(root, probe)
    report = qualify(inventory, profile)
    if args.json:
        print(f'{{"inventory": {inventory.model_dump_json()}, '
              f'"report": {report.model_dump_json()}}}')
    else:
        print_report(inventory, report)
    return 1 if report.verdict == "FAIL" else 0


if __name__ == "__main__":
    sys.exit(main())
