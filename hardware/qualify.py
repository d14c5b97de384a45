"""Qualification: check an inventory against a requirement profile, line by line.

A profile is YAML in hardware/profiles (or any file): a name, an optional
profile it extends, and checks, each with the verdict it gives when unmet
(WARN or FAIL) and its threshold. The report says PASS/WARN/FAIL per check
with the reason in words, and its overall verdict is the worst line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError

from hardware.model import CheckResult, HardwareInventory, HwModel, QualificationReport, Verdict

PROFILES = Path(__file__).parent / "profiles"
GIB = 1024**3


class ProfileError(ValueError):
    """The profile cannot be read or says something this version does not understand."""


class CheckSpec(HwModel):
    severity: Literal["WARN", "FAIL"] = Field(description="Verdict when the check is not met")
    value: int | None = Field(default=None, ge=0, description="Threshold, for checks with one")
    min_size_gib: int | None = Field(default=None, ge=1, description="Smallest OSD disk")


class Profile(HwModel):
    name: str
    description: str = ""
    extends: str | None = None
    checks: dict[str, CheckSpec]


# A check answers (met?, reason); None means "does not apply here" and counts as met.
CheckFn = Callable[[HardwareInventory, CheckSpec], tuple[bool | None, str]]


def _need(spec: CheckSpec, name: str) -> int:
    if spec.value is None:
        raise ProfileError(f"check '{name}' needs a 'value'")
    return spec.value


def cpu_virtualization(inv: HardwareInventory, spec: CheckSpec) -> tuple[bool | None, str]:
    cpu = inv.cpu
    if cpu.virtualization:
        kind = "Intel VT-x" if cpu.virtualization == "vmx" else "AMD-V"
        return True, f"{cpu.model} offers {kind} ({cpu.virtualization})"
    guest = " (this host is itself a VM)" if cpu.is_virtual_machine else ""
    return False, f"{cpu.model} shows neither vmx nor svm{guest}: enable VT-x/AMD-V in firmware"


def kvm_usable(inv: HardwareInventory, spec: CheckSpec) -> tuple[bool | None, str]:
    if inv.kvm.usable:
        return True, inv.kvm.detail
    if inv.kvm.usable is None:
        return False, f"{inv.kvm.detail} (--kvm-probe boots one to find out)"
    return False, f"{inv.kvm.detail}; VMs would run under slow TCG emulation"


def min_memory_gib(inv: HardwareInventory, spec: CheckSpec) -> tuple[bool | None, str]:
    need, have = _need(spec, "min_memory_gib"), inv.memory.total_mib / 1024
    return have >= need, f"{have:.0f} GiB of memory, at least {need} GiB required"


def min_threads(inv: HardwareInventory, spec: CheckSpec) -> tuple[bool | None, str]:
    need, have = _need(spec, "min_threads"), inv.cpu.threads
    return have >= need, (f"{have} logical CPUs ({inv.cpu.sockets} sockets, {inv.cpu.cores} "
                          f"cores), at least {need} required")


def min_nics_with_link(inv: HardwareInventory, spec: CheckSpec) -> tuple[bool | None, str]:
    need = _need(spec, "min_nics_with_link")
    up = [n.name for n in inv.nics if n.physical and n.link]
    listed = f" ({', '.join(up)})" if up else ""
    return len(up) >= need, f"{len(up)} physical NICs with link{listed}, at least {need} required"


def free_osd_disks(inv: HardwareInventory, spec: CheckSpec) -> tuple[bool | None, str]:
    need = _need(spec, "free_osd_disks")
    floor = (spec.min_size_gib or 1) * GIB
    free = [d for d in inv.disks if d.free_for_osd and d.size_bytes >= floor]
    if len(free) >= need:
        names = ", ".join(f"{d.name} ({d.size_bytes // GIB} GiB)" for d in free)
        return True, f"{len(free)} free disks for Ceph OSDs: {names}"
    taken = "; ".join(f"{d.name}: {d.in_use_reason or 'smaller than the minimum'}"
                      for d in inv.disks if d not in free)
    return False, (f"{len(free)} free disks of at least {spec.min_size_gib or 1} GiB for Ceph "
                   f"OSDs, {need} required" + (f" ({taken})" if taken else ""))


def iommu(inv: HardwareInventory, spec: CheckSpec) -> tuple[bool | None, str]:
    return inv.iommu.enabled, f"IOMMU: {inv.iommu.detail}"


def min_gpus(inv: HardwareInventory, spec: CheckSpec) -> tuple[bool | None, str]:
    need = _need(spec, "min_gpus")
    models = ", ".join(sorted({g.model for g in inv.gpus})) or "none"
    have = len(inv.gpus)
    return have >= need, f"{have} NVIDIA GPUs ({models}), at least {need} required"


def gpus_passthrough_ready(inv: HardwareInventory, spec: CheckSpec) -> tuple[bool | None, str]:
    if not inv.gpus:
        return None, "no NVIDIA GPUs"
    blocked = [f"{g.address} {g.model}: {g.passthrough_blocker}"
               for g in inv.gpus if g.passthrough_blocker]
    if blocked:
        return False, "GPUs that cannot be passed through: " + "; ".join(blocked)
    return True, f"all {len(inv.gpus)} NVIDIA GPUs can be passed through (own IOMMU groups)"


def bmc(inv: HardwareInventory, spec: CheckSpec) -> tuple[bool | None, str]:
    why = "" if inv.bmc.present else " (HA fencing needs a BMC to power the node off)"
    return inv.bmc.present, inv.bmc.detail + why


CHECKS: dict[str, CheckFn] = {
    "cpu_virtualization": cpu_virtualization,
    "kvm_usable": kvm_usable,
    "min_memory_gib": min_memory_gib,
    "min_threads": min_threads,
    "min_nics_with_link": min_nics_with_link,
    "free_osd_disks": free_osd_disks,
    "iommu": iommu,
    "min_gpus": min_gpus,
    "gpus_passthrough_ready": gpus_passthrough_ready,
    "bmc": bmc,
}


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES.glob("*.yaml"))


def load_profile(ref: str, _seen: tuple[str, ...] = ()) -> Profile:
    """A profile by name (from hardware/profiles) or path, with what it extends merged in.

    Raises ProfileError naming the file and the problem: missing, not YAML, an unknown
    check, a loop of `extends`.
    """
    path = Path(ref) if ref.endswith((".yaml", ".yml")) or "/" in ref else PROFILES / f"{ref}.yaml"
    if not path.is_file():
        raise ProfileError(f"no profile '{ref}' (known: {', '.join(available_profiles())})")
    if str(path) in _seen:
        raise ProfileError(f"profile '{ref}' extends itself through {' -> '.join(_seen)}")
    try:
        profile = Profile.model_validate(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ValidationError) as e:
        raise ProfileError(f"profile {path}: {e}") from e
    unknown = sorted(set(profile.checks) - set(CHECKS))
    if unknown:
        raise ProfileError(f"profile {path}: unknown checks {', '.join(unknown)} "
                           f"(known: {', '.join(CHECKS)})")
    if profile.extends:
        base = load_profile(profile.extends, (*_seen, str(path)))
        profile.checks = {**base.checks, **profile.checks}
    return profile


def qualify(inv: HardwareInventory, profile: Profile) -> QualificationReport:
    """Every check of the profile, in the order written, the worst verdict, and the disks
    free for a Ceph OSD (whatever the profile asks of them)."""
    results = []
    for name, spec in profile.checks.items():
        met, reason = CHECKS[name](inv, spec)
        verdict = Verdict.PASS if met is None or met else Verdict(spec.severity)
        results.append(CheckResult(check=name, verdict=verdict, reason=reason))
    worst = max((r.verdict for r in results), key=lambda v: v.rank, default=Verdict.PASS)
    return QualificationReport(profile=profile.name, verdict=worst, results=results,
                               free_osd_disks=[d.name for d in inv.disks if d.free_for_osd])
