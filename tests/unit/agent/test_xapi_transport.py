"""Fingerprints, kept certificates and int64 arguments of the XAPI client
(agent/drivers/xapi)."""

from __future__ import annotations

import hashlib
import xmlrpc.client
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.drivers.xapi.pool import PoolClient, _Session, to_wire
from agent.drivers.xapi.transport import (
    PinnedTransport,
    fingerprint_of,
    format_fingerprint,
    normalize_fingerprint,
)
from agent.protocol import XapiSettings
from tests.xapi_sim.server import make_certificate

DIGITS = hashlib.sha256(b"certificate").hexdigest()


@pytest.mark.parametrize("spelling", [DIGITS, DIGITS.upper(), format_fingerprint(DIGITS),
                                      "sha256:" + DIGITS, f"  {DIGITS}\n"])
def test_usual_spellings_of_a_fingerprint_are_one(spelling: str) -> None:
    assert normalize_fingerprint(spelling) == DIGITS


@pytest.mark.parametrize("bad", ["", DIGITS[:-2], DIGITS + "00", "zz" + DIGITS[2:]])
def test_a_malformed_fingerprint_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a SHA-256 fingerprint"):
        normalize_fingerprint(bad)


def test_fingerprint_is_sha256_of_the_der_shown_as_openssl_does() -> None:
    assert fingerprint_of(b"certificate") == DIGITS
    shown = format_fingerprint(DIGITS)
    assert shown.split(":") == [DIGITS[i:i + 2].upper() for i in range(0, 64, 2)]


def test_ints_travel_as_decimal_strings() -> None:
    five_tib = 5 * 1024**4
    wired = to_wire(["OpaqueRef:x", {"virtual_size": five_tib, "sharable": False,
                                     "other_config": {"n": 3}}, 30.0, [1, True]])
    assert wired == ["OpaqueRef:x", {"virtual_size": str(five_tib), "sharable": False,
                                     "other_config": {"n": "3"}}, 30.0, ["1", True]]
    xmlrpc.client.dumps(tuple(wired))  # the marshaller refuses ints beyond 32 bits


def test_a_pool_is_reached_over_https_only() -> None:
    with pytest.raises(ValueError, match="https"):
        PoolClient("http://10.0.0.1/", "root", "pw", {})
    with pytest.raises(ValueError, match="not a SHA-256 fingerprint"):
        PoolClient("https://10.0.0.1/", "root", "pw", {"10.0.0.1": "nope"})


def test_the_password_never_shows_in_a_session_repr() -> None:
    session = _Session("https://10.0.0.1/", PinnedTransport(DIGITS), "lab")
    session.last_login_params = ("root", "hunter2", "1.0", "vauban")
    assert "hunter2" not in repr(session) and "lab" in repr(session)


def _certificate(tmp_path: Path, name: str) -> tuple[str, str]:
    """(PEM, SHA-256) of a new self-signed certificate."""
    cert, _, digest = make_certificate("10.0.0.1", tmp_path, name)
    return cert.read_text(), digest


def test_a_kept_certificate_must_be_that_of_its_hosts_pin(tmp_path: Path) -> None:
    pem, digest = _certificate(tmp_path, "a")
    other, _ = _certificate(tmp_path, "b")
    client = PoolClient("https://10.0.0.1/", "root", "pw", {"10.0.0.1": digest},
                        certificates={"10.0.0.1": pem})
    assert client.certificates == {"10.0.0.1": pem}
    with pytest.raises(ValueError, match="10.0.0.1: the certificate kept is not its pinned"):
        client.take_pins({"10.0.0.1": digest}, {"10.0.0.1": other})
    with pytest.raises(ValueError, match="10.0.0.2: the certificate kept is not its pinned"):
        client.take_pins({"10.0.0.1": digest}, {"10.0.0.2": pem})
    with pytest.raises(ValueError, match="no certificate in what was kept"):
        client.take_pins({"10.0.0.1": digest}, {"10.0.0.1": "not a PEM"})
    assert client.certificates == {"10.0.0.1": pem}  # a refused change takes nothing


def test_pool_settings_refuse_a_certificate_that_is_not_the_pinned_one(
        tmp_path: Path) -> None:
    pem, digest = _certificate(tmp_path, "a")
    other, _ = _certificate(tmp_path, "b")
    base = {"url": "https://10.0.0.1", "username": "root", "password": "hunter2",
            "pool_uuid": "p", "pins": {"10.0.0.1": digest}}
    assert XapiSettings(**base, certificates={"10.0.0.1": pem}).certificates
    with pytest.raises(ValidationError, match="member 10.0.0.1: its certificate is not") as e:
        XapiSettings(**base, certificates={"10.0.0.1": other})
    assert "hunter2" not in str(e.value)
