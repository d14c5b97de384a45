"""Qualification reports and the vauban-hw command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hardware import cli
from hardware.discover import discover
from hardware.model import Verdict
from hardware.qualify import ProfileError, available_profiles, load_profile, qualify
from hardware.record import record
from hardware.sysfs import Root


def lines(root: Root, profile: str) -> dict[str, tuple[str, str]]:
    report = qualify(discover(root), load_profile(profile))
    return {r.check: (r.verdict.value, r.reason) for r in report.results}


def test_shipped_profiles_load_and_gpu_extends_compute() -> None:
    assert {"compute", "gpu", "storage"} <= set(available_profiles())
    gpu = load_profile("gpu")
    assert list(gpu.checks)[:3] == ["cpu_virtualization", "kvm_usable", "min_memory_gib"]
    assert gpu.checks["min_memory_gib"].value == 128 and gpu.checks["iommu"].severity == "FAIL"
    assert load_profile("compute").checks["iommu"].severity == "WARN"


def test_gpu_server_qualifies_as_gpu_node_with_only_kvm_unproven(gpu_server: Root) -> None:
    report = qualify(discover(gpu_server), load_profile("gpu"))
    assert report.verdict == Verdict.WARN
    assert [r.check for r in report.results if r.verdict != Verdict.PASS] == ["kvm_usable"]
    assert qualify(discover(gpu_server, lambda: (True, "booted in 0.4 s")),
                   load_profile("gpu")).verdict == Verdict.PASS


def test_workstation_fails_gpu_profile_on_its_shared_group(workstation: Root) -> None:
    got = lines(workstation, "gpu")
    verdict, reason = got["gpus_passthrough_ready"]
    assert verdict == "FAIL" and "0000:05:00.0 GeForce RTX 4090" in reason
    assert "0000:03:00.0 (SATA controller, driver ahci)" in reason
    assert got["bmc"][0] == "WARN" and got["iommu"][0] == "PASS"


def test_no_iommu_server_fails_gpu_profile_and_warns_compute(no_iommu: Root) -> None:
    assert lines(no_iommu, "gpu")["iommu"][0] == "FAIL"
    compute = lines(no_iommu, "compute")
    assert compute["iommu"][0] == "WARN"
    verdict, reason = compute["free_osd_disks"]
    assert verdict == "WARN"
    assert "sdb: /dev/sdb is swap" in reason and "sdc: removable media" in reason


def test_storage_profile_wants_two_free_disks(gpu_server: Root, workstation: Root) -> None:
    assert lines(gpu_server, "storage")["free_osd_disks"][0] == "PASS"
    assert lines(workstation, "storage")["free_osd_disks"] == (
        "FAIL", "1 free disks of at least 100 GiB for Ceph OSDs, 2 required "
                "(nvme0n1: /dev/nvme0n1p1 is mounted)")


def test_profile_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="no profile 'nope' \\(known: compute, gpu"):
        load_profile("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nchecks:\n  min_ram: {severity: FAIL, value: 1}\n")
    with pytest.raises(ProfileError, match="unknown checks min_ram"):
        load_profile(str(bad))
    bad.write_text("name: bad\nchecks:\n  iommu: {severity: MAYBE}\n")
    with pytest.raises(ProfileError, match="severity"):
        load_profile(str(bad))
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ProfileError, match="bad.yaml"):
        load_profile(str(bad))
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"name: loop\nextends: {loop}\nchecks: {{}}\n")
    with pytest.raises(ProfileError, match="extends itself"):
        load_profile(str(loop))
    novalue = tmp_path / "novalue.yaml"
    novalue.write_text("name: nv\nchecks:\n  min_threads: {severity: WARN}\n")
    with pytest.raises(ProfileError, match="'min_threads' needs a 'value'"):
        qualify(discover(Root("/")), load_profile(str(novalue)))


def test_record_replays_a_tree_exactly(gpu_server: Root, workstation: Root, tmp_path: Path) -> None:
    for source in (gpu_server, workstation):
        dest = tmp_path / source.path.name
        assert record(source, dest) > 50
        assert discover(Root(dest)) == discover(source)


def test_cli_report_text_json_and_exit_codes(gpu_server: Root, workstation: Root,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report", "--root", str(gpu_server.path), "--profile", "gpu"]) == 0
    out = capsys.readouterr().out
    assert "GPUs    0000:18:00.0 H100 SXM5 80GB" in out and "Verdict: WARN" in out
    assert cli.main(["report", "--json", "--root", str(workstation.path), "--profile", "gpu"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["report"]["verdict"] == "FAIL" and len(doc["inventory"]["gpus"]) == 2


def test_cli_bad_input_exits_2_with_a_message(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report", "--root", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert cli.main(["report", "--profile", "nope"]) == 2
    assert "no profile 'nope'" in capsys.readouterr().err
    assert cli.main(["report", "--kvm-probe", "--root", str(tmp_path)]) == 2
    assert "--kvm-probe boots a guest on this host" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert cli.main(["record", str(tmp_path / "full")]) == 2


def test_report_lists_the_free_disks_whatever_the_profile(gpu_server: Root, workstation: Root,
                                                          no_iommu: Root) -> None:
    for root in (gpu_server, workstation, no_iommu):
        inv = discover(root)
        free = [d.name for d in inv.disks if d.free_for_osd]
        for profile in ("compute", "gpu", "storage"):
            assert qualify(inv, load_profile(profile)).free_osd_disks == free
    assert "sdb" not in qualify(discover(no_iommu), load_profile("compute")).free_osd_disks
    assert qualify(discover(workstation), load_profile("storage")).free_osd_disks  # though FAIL
