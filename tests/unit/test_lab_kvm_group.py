"""The lab gives a node's kvm group the host's GID (the host's /dev/kvm is bound in); the
users whose primary group it was (libvirt-qemu, whose QEMU reads its TLS key through it)
must stay in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.node import share_kvm_group

NODE_GROUP = "root:x:0:\nkvm:x:105:\nlibvirt-qemu:x:64055:libvirt-qemu\n"
NODE_PASSWD = ("root:x:0:0:root:/root:/bin/bash\n"
               "libvirt-qemu:x:64055:105:Libvirt Qemu,,,:/var/lib/libvirt:/usr/sbin/nologin\n")


def _files(tmp_path: Path) -> tuple[Path, Path, Path]:
    group, passwd, host = tmp_path / "group", tmp_path / "passwd", tmp_path / "host-group"
    group.write_text(NODE_GROUP)
    passwd.write_text(NODE_PASSWD)
    host.write_text("root:x:0:\nkvm:x:995:libvirt-qemu\n")
    return group, passwd, host


def test_the_kvm_group_and_its_primary_members_move_to_the_hosts_gid(tmp_path: Path) -> None:
    group, passwd, host = _files(tmp_path)
    share_kvm_group(group, host, passwd)
    assert group.read_text() == "root:x:0:\nkvm:x:995:\nlibvirt-qemu:x:64055:libvirt-qemu\n"
    assert passwd.read_text() == NODE_PASSWD.replace("64055:105:", "64055:995:")
    share_kvm_group(group, host, passwd)  # again: nothing more changes
    assert passwd.read_text() == NODE_PASSWD.replace("64055:105:", "64055:995:")


def test_a_gid_taken_in_the_node_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    group, passwd, host = _files(tmp_path)
    host.write_text("kvm:x:64055:\n")
    with pytest.raises(RuntimeError, match="libvirt-qemu has GID 64055"):
        share_kvm_group(group, host, passwd)
    assert (group.read_text(), passwd.read_text()) == (NODE_GROUP, NODE_PASSWD)
