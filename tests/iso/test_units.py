"""Unit tests of the ISO builder's pure parts: hashes, SBOM, GRUB menu, identity checks."""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
import zipfile
from pathlib import Path

import pytest

from iso import base, build, grub, hashing, identity, layer, qemu, sbom


def _wheel(name: str, payload: bytes, date: tuple[int, int, int, int, int, int]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(zipfile.ZipInfo(f"{name}/__init__.py", date_time=date), payload)
    return buf.getvalue()


def _archive(path: Path, wheels: dict[str, bytes], mtime: int) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in wheels.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), mtime
            tar.addfile(info, io.BytesIO(data))
    return path


def test_wheel_digests_ignore_the_archive_dates_but_not_the_wheels(tmp_path: Path) -> None:
    wheel = _wheel("vauban", b"x = 1\n", (2026, 1, 2, 3, 4, 6))
    one = _archive(tmp_path / "one.tar", {"vauban-1.0-py3-none-any.whl": wheel}, 1)
    two = _archive(tmp_path / "two.tar", {"vauban-1.0-py3-none-any.whl": wheel}, 2)
    other = _archive(tmp_path / "three.tar", {
        "vauban-1.0-py3-none-any.whl": _wheel("vauban", b"x = 2\n", (2026, 1, 2, 3, 4, 6))}, 1)
    assert build.wheel_digests(one) == build.wheel_digests(two)
    assert build.wheel_digests(one) != build.wheel_digests(other)
    assert hashing.digest(build.wheel_digests(one)) == hashing.digest(build.wheel_digests(two))


def test_the_date_is_the_newest_file_in_the_wheels(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "w.tar", {
        "a-1-py3-none-any.whl": _wheel("a", b"", (2020, 1, 1, 0, 0, 0)),
        "vauban-1.0-py3-none-any.whl": _wheel("vauban", b"", (2026, 1, 2, 3, 4, 6))}, 0)
    assert build.newest_wheel_entry(archive) == 1767323046  # 2026-01-02T03:04:06Z


def test_digest_is_stable_and_order_free() -> None:
    assert hashing.digest({"a": 1, "b": [1, 2]}) == hashing.digest({"b": [1, 2], "a": 1})
    assert hashing.digest({"a": 1}) != hashing.digest({"a": 2})
    assert len(hashing.digest({})) == 16


def test_base_packages_come_from_the_roles_defaults(tmp_path: Path) -> None:
    for role, key in base.ROLE_PACKAGE_LISTS:
        folder = tmp_path / role / "defaults"
        folder.mkdir(parents=True, exist_ok=True)
        main = folder / "main.yml"
        lists = json.loads(main.read_text()) if main.exists() else {}
        lists[key] = [f"{role}-{key}-pkg"]
        main.write_text(json.dumps(lists))  # JSON is YAML
    assert "hypervisor-hypervisor_packages-pkg" in base.packages(tmp_path)
    assert "linux-image-amd64" in base.packages(tmp_path)
    before = base.inputs(tmp_path)
    (tmp_path / "base/defaults/main.yml").write_text(json.dumps({"base_packages": ["chrony"]}))
    assert hashing.digest(base.inputs(tmp_path)) != hashing.digest(before)


def test_the_real_roles_packages_are_in_the_base() -> None:
    wanted = base.packages()
    for name in ("libvirt-daemon-system", "qemu-system-x86", "ceph-common", "python3-rados",
                 "python3-rbd", "ceph-osd", "ceph-mon", "chrony", "nftables", "openssh-server",
                 "live-boot", "python3-venv"):
        assert name in wanted


def test_dpkg_query_rows_keep_installed_packages_only() -> None:
    rows = base.parse_dpkg_query(["installed\tzlib1g\t1:1.2.13\tamd64",
                                  "config-files\told\t1\tamd64",
                                  "installed\tbash\t5.2\tamd64"])
    assert rows == [{"name": "bash", "version": "5.2", "arch": "amd64"},
                    {"name": "zlib1g", "version": "1:1.2.13", "arch": "amd64"}]


def test_sbom_is_cyclonedx_with_debian_and_python_purls() -> None:
    doc = sbom.sbom("0.1.0", "abcd", 1767323046, "bookworm",
                    [{"name": "linux-image-amd64", "version": "6.1.1+deb12u1", "arch": "amd64"}],
                    [{"name": "Pydantic_Core", "version": "2.0"}])
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == "1.5"
    assert str(doc["serialNumber"]).startswith("urn:uuid:")
    assert doc == sbom.sbom("0.1.0", "abcd", 1767323046, "bookworm",
                            [{"name": "linux-image-amd64", "version": "6.1.1+deb12u1",
                              "arch": "amd64"}], [{"name": "Pydantic_Core", "version": "2.0"}])
    components = doc["components"]
    assert isinstance(components, list)
    assert [c["purl"] for c in components] == [
        "pkg:deb/debian/linux-image-amd64@6.1.1%2Bdeb12u1?arch=amd64&distro=bookworm",
        "pkg:pypi/pydantic-core@2.0"]
    metadata = doc["metadata"]
    assert isinstance(metadata, dict) and metadata["timestamp"] == "2026-01-02T03:04:06Z"


def test_grub_menu_installs_by_default_and_every_entry_has_a_hotkey() -> None:
    cfg = grub.grub_cfg("0.1.0")
    assert "set default=0" in cfg and "set timeout=5" in cfg
    assert "serial --unit=0 --speed=115200" in cfg
    assert "terminal_input serial console" in cfg
    entries = [line for line in cfg.splitlines() if line.startswith("menuentry")]
    assert entries == ['menuentry "Install Vauban node" --hotkey=i {',
                       'menuentry "Install Vauban node (ask the questions)" --hotkey=a {',
                       'menuentry "Live system (rescue, demo)" --hotkey=l {']
    kernels = [line.split()[2:] for line in cfg.splitlines() if line.strip().startswith("linux")]
    for args in kernels:
        assert {"boot=live", "nonetworking", "console=tty0", "console=ttyS0,115200"} <= set(args)
        assert args[-1] == "console=ttyS0,115200" or args[-1].startswith("vauban.install=")
    assert kernels[0][-1] == "vauban.install=auto"
    assert kernels[1][-1] == "vauban.install=interactive"
    assert not any(a.startswith("vauban.") for a in kernels[2])


def test_identity_problems_name_keys_ids_and_secrets() -> None:
    paths = ["etc/ssh/ssh_host_ed25519_key", "etc/ssh/sshd_config", "etc/machine-id",
             "var/lib/dbus/machine-id", "etc/vauban/firstboot.toml", "var/lib/vauban/agent",
             "var/lib/vauban/agent/node.json", "etc/ssl/certs/ca.pem"]
    problems = identity.identity_problems(paths, {"etc/machine-id": 33, "etc/hostname": 0})
    assert problems == ["etc/ssh/ssh_host_ed25519_key: must not be in the image",
                        "var/lib/dbus/machine-id: must not be in the image",
                        "etc/vauban/firstboot.toml: must not be in the image",
                        "var/lib/vauban/agent/node.json: must not be in the image",
                        "etc/machine-id: must be empty, holds 33 bytes"]
    assert identity.identity_problems(["etc/machine-id", "etc/hostname"],
                                      {"etc/machine-id": 0, "etc/hostname": 0}) == []


def test_strip_identity_leaves_no_key_or_id(tmp_path: Path) -> None:
    for name in ("etc/ssh/ssh_host_rsa_key", "etc/ssh/ssh_host_rsa_key.pub", "etc/machine-id",
                 "var/lib/dbus/machine-id", "etc/hostname", "var/lib/systemd/random-seed"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("secret")
    identity.strip_identity(tmp_path)
    assert list((tmp_path / "etc/ssh").iterdir()) == []
    assert (tmp_path / "etc/machine-id").read_text() == ""
    assert not (tmp_path / "var/lib/dbus/machine-id").exists()
    assert not (tmp_path / "var/lib/systemd/random-seed").exists()


def test_the_vauban_wheel_is_found_once() -> None:
    assert layer.wheel_version(["vauban-0.1.0-py3-none-any.whl", "pyyaml-6.0.3-x.whl"]) == "0.1.0"
    with pytest.raises(ValueError, match="0 vauban wheels"):
        layer.wheel_version(["pyyaml-6.0.3-cp311-cp311-linux_x86_64.whl"])


def test_role_files_are_what_the_roles_write_with_their_defaults() -> None:
    files = layer.role_files()
    assert 'data_dir = "/var/lib/vauban/agent"' in files["etc/vauban/agent.toml"]
    assert 'hardware_profile = "compute"' in files["etc/vauban/agent.toml"]
    assert files["etc/modules-load.d/vauban.conf"] == "bridge\nbr_netfilter\nvxlan\ntun\n"
    assert "net.bridge.bridge-nf-call-iptables = 1" in files["etc/sysctl.d/60-vauban.conf"]
    assert files["etc/udev/rules.d/65-vauban-kvm.rules"] == (
        'KERNEL=="kvm", GROUP="kvm", MODE="0660"')


def test_libvirt_lines_are_the_hypervisor_roles_with_its_defaults() -> None:
    """The ISO sets the very lines the role's lineinfile tasks set (rendered with the role's
    defaults), so an ISO node takes and makes migrations as a rolled-out one does."""
    import jinja2
    import yaml

    roles = base.ROLES
    defaults = yaml.safe_load((roles / "hypervisor/defaults/main.yml").read_text())
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters["to_json"] = json.dumps
    from_role: dict[str, list[tuple[str, str]]] = {}
    for task in yaml.safe_load((roles / "hypervisor/tasks/main.yml").read_text()):
        edit = task.get("ansible.builtin.lineinfile")
        if edit is None or env.compile_expression(task.get("when", "true"))(**defaults) \
                is False:
            continue
        for item in task.get("loop", [{}]):
            def render(text: str, item: dict[str, str] = item) -> str:
                while "{{" in text:  # a loop item's field is a template itself, as in Ansible
                    text = env.from_string(text).render(**defaults, item=item)
                return text
            from_role.setdefault(render(edit["path"]).lstrip("/"), []).append(
                (render(edit["regexp"]), render(edit["line"])))
    assert layer.libvirt_lines() == from_role
    assert 'OU=vauban-libvirt' in dict(from_role["etc/libvirt/libvirtd.conf"])[
        r"^#?\s*tls_allowed_dn_list\s*="]


def test_a_line_is_set_as_lineinfile_sets_it() -> None:
    text = "# comment\n#auth_tls = \"sasl\"\nother = 1\n"
    assert layer.set_line(text, r"^#?\s*auth_tls\s*=", 'auth_tls = "none"') == \
        '# comment\nauth_tls = "none"\nother = 1\n'
    assert layer.set_line("a = 1\n", r"^#?\s*b\s*=", "b = 2") == "a = 1\nb = 2\n"


def test_units_are_enabled_for_their_install_targets(tmp_path: Path) -> None:
    assert layer.install_links(layer.UNITS / "vauban-agent.service") == [
        "multi-user.target.wants"]
    unit = tmp_path / "x.service"
    unit.write_text("[Unit]\nDescription=x\n[Install]\nWantedBy=a.target b.target\n"
                    "RequiredBy=c.target\n")
    assert layer.install_links(unit) == ["a.target.wants", "b.target.wants", "c.target.requires"]
    unit.write_text("[Unit]\nDescription=never enabled\n")
    assert layer.install_links(unit) == []


def test_volume_id_is_never_the_answers_label() -> None:
    assert build.volume_id("0.1.0") == "VAUBAN_0_1_0"


def test_partial_base_builds_of_gone_processes_are_removed(tmp_path: Path) -> None:
    gone = tmp_path / "base-0123.building-999999999"
    running = tmp_path / f"base-4567.building-{os.getpid()}"
    finished = tmp_path / "base-89ab"
    for folder in (gone, running, finished):
        folder.mkdir()
    base.remove_stale(tmp_path)
    assert not gone.exists() and running.exists() and finished.exists()


def test_old_bases_are_pruned_to_the_newest_but_one(tmp_path: Path) -> None:
    made = []
    for i, name in enumerate(("base-0001", "base-0002", "base-0003", "base-0004")):
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
        made.append(tmp_path / name)
    building = tmp_path / f"base-0005.building-{os.getpid()}"
    building.mkdir()
    # just built (its inputs came back): kept, with the newest other
    base.prune(tmp_path, made[0], "base-*", base.KEEP_BASES)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "base-0001", "base-0004", building.name]


def test_a_cached_base_is_used_without_building(tmp_path: Path) -> None:
    folder = base.base_path(tmp_path)
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"built": 1, "packages": []}))
    found = base.ensure_base(tmp_path)  # would fail without root and a mirror if it built
    assert found.path == folder and found.hash == folder.name.removeprefix("base-")
    assert found.manifest()["built"] == 1


def test_console_waits_consume_but_since_boot_finds_lines_already_passed(tmp_path: Path) -> None:
    guest, test = socket.socketpair()
    with guest, test:
        console = qemu.Console(test, tmp_path / "serial.log")
        guest.sendall(b"\x1b[0;32mbanner: joined\x1b[0m\r\nVAUBAN-NODE: joined as n1\r\n")
        assert console.wait_for(r"VAUBAN-NODE: joined as (\w+)\n", 5).group(1) == b"n1"
        with pytest.raises(TimeoutError, match="banner: joined"):  # passed: not seen again
            console.wait_for(r"banner: joined\n", 0.2)
        assert console.wait_for(r"banner: joined\n", 5, since_boot=True)
        guest.sendall(b"later\n")
        assert console.wait_for(r"later", 5)  # since_boot left the last match in place
    assert b"\x1b[0;32m" in (tmp_path / "serial.log").read_bytes()  # the log keeps it all
