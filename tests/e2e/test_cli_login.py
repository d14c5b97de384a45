"""`vauban login` at a terminal: the password, then the one-time code the server asks for,
are asked without echo, and the token is kept in a file only the user can read; for
automation the code comes from an otpauth URI file. Runs the real CLI (on a
pseudo-terminal) against a real controller process (stopped by PID)."""

from __future__ import annotations

import os
import pty
import select
import stat
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.cli.remotes import Store
from controller.services.totp import code_from_uri
from tests.e2e.region import BIN, E2ERegion


@pytest.fixture
def controller() -> Iterator[E2ERegion]:
    with E2ERegion.controller_only() as region:
        yield region


def _read_until(fd: int, wanted: bytes, seen: bytearray) -> bool:
    """Read the terminal into `seen` until `wanted` appears (True) or it closes (False)."""
    while wanted not in seen:
        ready, _, _ = select.select([fd], [], [], 60)
        if not ready:
            return False
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the other side closed (EIO on Linux)
            return False
        if not chunk:
            return False
        seen += chunk
    return True


def test_login_at_a_terminal_asks_without_echo_and_keeps_the_token_private(
        controller: E2ERegion) -> None:
    config = controller.root / "cli.json"
    config.write_text("{}")
    config.chmod(0o644)  # made earlier, readable by others: the token must not stay so
    password = controller.layout.password_file.read_text().strip()
    env = {k: v for k, v in os.environ.items() if k not in ("VAUBAN_TOKEN", "VAUBAN_URL")}
    env["VAUBAN_CONFIG"] = str(config)
    main, terminal = pty.openpty()
    cli = subprocess.Popen(
        [str(BIN / "vauban"), "login", "--url", controller.layout.url, "--ca-file",
         str(controller.layout.ca_file)], stdin=terminal, stdout=terminal, stderr=terminal,
        env=env, start_new_session=True)
    os.close(terminal)
    seen = bytearray()
    try:
        assert _read_until(main, b"password for admin at", seen), seen.decode()
        os.write(main, password.encode() + b"\n")
        # the server says a code is needed once the password was right: asked for then
        assert _read_until(main, b"one-time code: ", seen), seen.decode()
        code = code_from_uri(controller.layout.totp_file.read_text(), datetime.now(UTC))
        os.write(main, code.encode() + b"\n")
        assert _read_until(main, b"logged in to", seen), seen.decode()
        assert cli.wait(60) == 0
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        os.close(main)
    assert password.encode() not in seen, "the password was echoed"
    assert code.encode() not in seen, "the one-time code was echoed"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert config.read_text().count("vbt_") == 1


def test_login_for_automation_reads_the_code_from_an_otpauth_uri_file(
        controller: E2ERegion, tmp_path: Path) -> None:
    """No terminal: the password from a file, the code computed from --totp-file; without
    a code the CLI says how to give one, and the refusal was counted like a failed login."""
    config = tmp_path / "cli.json"
    env = {k: v for k, v in os.environ.items() if k not in ("VAUBAN_TOKEN", "VAUBAN_URL")}
    env["VAUBAN_CONFIG"] = str(config)
    lay = controller.layout
    login = [str(BIN / "vauban"), "login", "--url", lay.url, "--ca-file", str(lay.ca_file),
             "--password-file", str(lay.password_file)]
    refused = subprocess.run(login, env=env, capture_output=True, text=True, timeout=120,
                             stdin=subprocess.DEVNULL, check=False)
    assert refused.returncode == 1
    assert "one-time code" in refused.stderr and "--totp-file" in refused.stderr
    assert not config.exists()
    done = subprocess.run([*login, "--totp-file", str(lay.totp_file)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "logged in to" in done.stdout
    _, remote = Store.load(config).chosen(None)  # the remote the login saved its token to
    assert remote is not None and (remote.token or "").startswith("vbt_")
