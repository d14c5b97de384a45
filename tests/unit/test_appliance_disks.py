"""Which disk the installer takes: the rule over fake disk descriptions, and the data check."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.disks import (
    MIN_DISK_BYTES,
    Candidate,
    DiskError,
    choose,
    holds_data,
    parse_rule,
)

GB = 10**9


def disk(name: str, size_gb: int = 480, *, removable: bool = False, model: str = "SSD",
         serial: str | None = None, in_use: str | None = None) -> Candidate:
    return Candidate(name=name, path=Path(f"/dev/{name}"), size_bytes=size_gb * GB,
                     removable=removable, model=model, serial=serial or f"S-{name}",
                     by_id=(f"/dev/disk/by-id/nvme-{model}_{name}",), in_use=in_use)


def blank(_c: Candidate) -> str | None:
    return None


def data_on(*names: str):  # type: ignore[no-untyped-def]
    return lambda c: "holds a gpt partition table" if c.name in names else None


def test_auto_takes_the_one_blank_fixed_disk() -> None:
    disks = [disk("sda", 480), disk("sdb", 480), disk("sdc", 32, removable=True)]
    assert choose("auto", disks, False, data_on("sda")).name == "sdb"


def test_auto_refuses_several_blank_disks_naming_them() -> None:
    with pytest.raises(DiskError, match="several disks: /dev/sda.*; /dev/sdb"):
        choose("auto", [disk("sda"), disk("sdb")], False, blank)


def test_auto_ignores_removable_and_small_disks() -> None:
    small = MIN_DISK_BYTES // GB - 1
    disks = [disk("sda", 480), disk("sdb", small), disk("sdc", 480, removable=True)]
    assert choose("auto", disks, False, blank).name == "sda"


def test_a_disk_with_data_needs_wipe() -> None:
    with pytest.raises(DiskError, match="holds a gpt partition table.*wipe = true"):
        choose("auto", [disk("sda")], False, data_on("sda"))
    assert choose("auto", [disk("sda")], True, data_on("sda")).name == "sda"


def test_wipe_never_takes_a_disk_in_use() -> None:
    with pytest.raises(DiskError, match="held by dm-0"):
        choose("/dev/sda", [disk("sda", in_use="/dev/sda2 is held by dm-0")], True, blank)


@pytest.mark.parametrize(("rule", "chosen"), [
    ("/dev/sdb", "sdb"),
    ("/dev/disk/by-id/nvme-SSD_sdb", "sdb"),
    ("serial:S-sdc", "sdc"),
    ("model:samsung", "sdc"),
    ("size>=900G", "sdc"),
    ("size<=300G", "sda"),
])
def test_rules(rule: str, chosen: str) -> None:
    disks = [disk("sda", 240), disk("sdb", 480), disk("sdc", 960, model="SAMSUNG MZ7")]
    assert choose(rule, disks, False, blank).name == chosen


def test_a_rule_matching_nothing_names_the_disks_seen() -> None:
    with pytest.raises(DiskError, match=r"no disk matches the rule 'serial:X'.*/dev/sda"):
        choose("serial:X", [disk("sda")], False, blank)


def test_a_rule_matching_several_is_ambiguous() -> None:
    with pytest.raises(DiskError, match="several disks"):
        choose("size>=100G", [disk("sda"), disk("sdb")], False, blank)


@pytest.mark.parametrize("text", ["sda", "size>100G", "size>=10M", "serial:", "/dev/../etc"])
def test_bad_rules(text: str) -> None:
    with pytest.raises(DiskError, match="not a disk rule"):
        parse_rule(text)


def test_holds_data_sees_bytes_at_either_end(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    with image.open("wb") as f:
        f.truncate(8 * 1024 * 1024)
    assert holds_data(image) is None
    with image.open("r+b") as f:
        f.seek(8 * 1024 * 1024 - 10)
        f.write(b"x")
    assert holds_data(image) == "has non-zero bytes in its last MiB"
