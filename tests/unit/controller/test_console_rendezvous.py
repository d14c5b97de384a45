"""The unix socket where a console's two legs meet, whatever the data folder's length."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

from controller import consoles as relay


def test_the_legs_meet_under_a_data_folder_longer_than_a_socket_address(tmp_path: Path) -> None:
    # every console failed with a 500 ("AF_UNIX path too long") under such a folder
    data_dir = tmp_path / ("d" * 120)
    data_dir.mkdir()
    path = relay.rendezvous_path(data_dir, str(uuid.uuid4()))
    assert len(str(path).encode()) > 107
    listener = relay.listen(path)
    try:
        assert path.is_socket()
        dialer = relay.connect(path)
        user = relay.accept_within(listener, path, 5.0)
        assert user is not None
        dialer.sendall(b"hello")
        assert user.recv(5) == b"hello"
        dialer.close()
        user.close()
    finally:
        listener.close()
    assert not path.exists()  # accepting removed it
    shutil.rmtree(data_dir)


def test_socket_files_older_than_a_listener_lives_are_swept(tmp_path: Path) -> None:
    stale = relay.rendezvous_path(tmp_path, "stale")
    fresh = relay.rendezvous_path(tmp_path, "fresh")
    stale.touch()
    fresh.touch()
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    assert relay.sweep_rendezvous(tmp_path, 600) == 1
    assert not stale.exists() and fresh.exists()
