"""Fingerprints and int64 arguments of the XAPI client (agent/drivers/xapi)."""

from __future__ import annotations

import hashlib
import xmlrpc.client

import pytest

from agent.drivers.xapi.pool import PoolClient, _Session, to_wire
from agent.drivers.xapi.transport import (
    PinnedTransport,
    fingerprint_of,
    format_fingerprint,
    normalize_fingerprint,
)

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
