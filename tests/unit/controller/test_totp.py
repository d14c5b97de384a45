"""TOTP codes: RFC 6238's test vector, the steps accepted around now, replay refused by
the last accepted step, provisioning URIs; and the password policy of a change."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from controller.errors import InvalidInput
from controller.services.account import check_new_password
from controller.services.totp import (
    code_at_step,
    code_from_uri,
    matching_step,
    new_seed,
    provisioning_uri,
    step_of,
)

# RFC 6238 appendix B: the SHA-1 seed "12345678901234567890", 59 s -> 94287082 (8 digits)
RFC_SEED = base64.b32encode(b"12345678901234567890").decode()
NOW = datetime(2026, 12, 1, 20, 0, 10, tzinfo=UTC)


def test_codes_are_the_last_six_digits_of_rfc_6238s_vector() -> None:
    assert code_at_step(RFC_SEED, 59 // 30) == "287082"
    assert code_at_step(RFC_SEED, 1111111109 // 30) == "081804"  # 07081804


def test_a_code_matches_its_step_and_the_neighbours_only() -> None:
    step = step_of(NOW)
    for offset in (-1, 0, 1):
        code = code_at_step(RFC_SEED, step + offset)
        assert matching_step(RFC_SEED, code, NOW, None) == step + offset
    for offset in (-2, 2):
        code = code_at_step(RFC_SEED, step + offset)
        if code not in {code_at_step(RFC_SEED, step + o) for o in (-1, 0, 1)}:
            assert matching_step(RFC_SEED, code, NOW, None) is None


def test_a_step_accepted_and_every_earlier_one_are_refused() -> None:
    step = step_of(NOW)
    current = code_at_step(RFC_SEED, step)
    assert matching_step(RFC_SEED, current, NOW, step - 1) == step
    assert matching_step(RFC_SEED, current, NOW, step) is None  # replayed
    assert matching_step(RFC_SEED, code_at_step(RFC_SEED, step - 1), NOW, step) is None
    assert matching_step(RFC_SEED, code_at_step(RFC_SEED, step + 1), NOW, step) == step + 1


def test_wrong_codes_do_not_match() -> None:
    step = step_of(NOW)
    near = {code_at_step(RFC_SEED, step + o) for o in (-1, 0, 1)}
    wrong = next(f"{n:06d}" for n in range(1_000_000) if f"{n:06d}" not in near)
    assert matching_step(RFC_SEED, wrong, NOW, None) is None
    assert matching_step(RFC_SEED, "", NOW, None) is None


def test_the_provisioning_uri_gives_back_the_same_codes() -> None:
    seed = new_seed()
    assert len(seed) == 32 and len(base64.b32decode(seed)) == 20
    uri = provisioning_uri(seed, "alice")
    assert uri.startswith("otpauth://totp/Vauban:alice?") and f"secret={seed}" in uri
    for at in (NOW, NOW + timedelta(seconds=30)):
        assert code_from_uri(uri + "\n", at) == code_at_step(seed, step_of(at))
    assert new_seed() != seed


def test_a_uri_that_is_not_totp_is_refused() -> None:
    with pytest.raises(ValueError):
        code_from_uri(f"otpauth://hotp/Vauban:alice?secret={RFC_SEED}&counter=1", NOW)


@pytest.mark.parametrize(("new", "message"), [
    ("short", "at least 12 characters"),
    ("the same password", "is the current one"),
])
def test_a_new_password_must_be_long_and_new(new: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        check_new_password("the same password", new)
    check_new_password("the same password", "another long one")
