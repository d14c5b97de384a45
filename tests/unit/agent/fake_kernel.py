"""A stand-in for the kernel's side of PCI and mdev sysfs writes, on a copy of a recorded tree.

Every write is logged as (path relative to the root, value), and has the effect
the kernel would give it: unbind removes the `driver` link, drivers_probe binds
the driver named in `driver_override`, mdev `create`/`remove` make and drop
the device.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from hardware.sysfs import Root

DEVICES = "sys/bus/pci/devices"


class FakeKernel:
    def __init__(self, recorded: Path, dest: Path) -> None:
        shutil.copytree(recorded, dest, symlinks=True)
        self.root = Root(dest)
        self.writes: list[tuple[str, str]] = []
        self.modules: list[str] = []
        self.refuse: set[tuple[str, str]] = set()  # (address, driver) probes that fail

    def driver(self, address: str) -> str | None:
        return self.root.link_name(f"{DEVICES}/{address}/driver")

    def override(self, address: str) -> str | None:
        return self.root.read(f"{DEVICES}/{address}/driver_override")

    def load_module(self, name: str) -> None:
        self.modules.append(name)
        for attr in ("bind", "unbind"):
            path = self.root.join(f"sys/bus/pci/drivers/{name}/{attr}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()

    def write(self, path: Path, value: str) -> None:
        rel = path.relative_to(self.root.path)
        self.writes.append((str(rel), value))
        if rel.name == "driver_override":
            path.write_text((value.strip() or "(null)") + "\n")
        elif rel.name == "unbind":
            os.unlink(self.root.join(f"{DEVICES}/{value}/driver"))
        elif str(rel) == "sys/bus/pci/drivers_probe":
            self._probe(value)
        elif rel.name == "create" and "mdev_supported_types" in rel.parts:
            self._create_mdev(path.parent, value)
        elif rel.name == "remove" and rel.parts[:4] == ("sys", "bus", "mdev", "devices"):
            self._remove_mdev(rel.parts[4])
        else:
            raise AssertionError(f"unexpected write of {value!r} to {rel}")

    def _probe(self, address: str) -> None:
        wanted = self.override(address)
        if wanted is None or wanted == "(null)" or (address, wanted) in self.refuse:
            return
        assert self.root.exists(f"sys/bus/pci/drivers/{wanted}"), f"no driver {wanted} loaded"
        os.symlink(f"../../../bus/pci/drivers/{wanted}",
                   self.root.join(f"{DEVICES}/{address}/driver"))

    def _create_mdev(self, type_dir: Path, uuid: str) -> None:
        device_dir = type_dir.resolve().parent.parent
        (device_dir / uuid).mkdir()
        os.symlink(f"../mdev_supported_types/{type_dir.name}", device_dir / uuid / "mdev_type")
        (device_dir / uuid / "remove").touch()
        link = self.root.join(f"sys/bus/mdev/devices/{uuid}")
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(device_dir / uuid, link.parent), link)
        available = type_dir / "available_instances"
        available.write_text(f"{int(available.read_text()) - 1}\n")

    def _remove_mdev(self, uuid: str) -> None:
        link = self.root.join(f"sys/bus/mdev/devices/{uuid}")
        device = link.resolve()
        type_dir = (device / "mdev_type").resolve()
        shutil.rmtree(device)
        link.unlink()
        available = type_dir / "available_instances"
        available.write_text(f"{int(available.read_text()) + 1}\n")
