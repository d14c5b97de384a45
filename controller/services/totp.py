"""TOTP codes (RFC 6238): 6 digits per 30-second step, from a base32 seed or its otpauth
URI. Pure, and needing nothing of the controller's own packages: the CLI and the test
helpers make codes with it, the controller checks them (controller.services.mfa).
"""

from __future__ import annotations

import hmac
from datetime import datetime

import pyotp

STEP_S = 30
DIGITS = 6
DRIFT_STEPS = 1  # steps accepted either side of the current one
ISSUER = "Vauban"


def new_seed() -> str:
    """A fresh random seed: 32 base32 characters, 160 bits."""
    return pyotp.random_base32()


def _totp(seed: str) -> pyotp.TOTP:
    return pyotp.TOTP(seed, digits=DIGITS, interval=STEP_S)


def provisioning_uri(seed: str, username: str) -> str:
    """The otpauth:// URI an authenticator app (or `vauban login --totp-file`) reads."""
    return _totp(seed).provisioning_uri(name=username, issuer_name=ISSUER)


def code_from_uri(uri: str, now: datetime) -> str:
    """The code of the otpauth:// `uri` at `now` (what an authenticator app shows).
    ValueError if `uri` is not a TOTP provisioning URI."""
    otp = pyotp.parse_uri(uri.strip())
    if not isinstance(otp, pyotp.TOTP):
        raise ValueError("not a TOTP provisioning URI (otpauth://totp/...)")
    return otp.at(now)


def step_of(now: datetime) -> int:
    """The time step `now` falls in (Unix time // 30)."""
    return int(now.timestamp()) // STEP_S


def code_at_step(seed: str, step: int) -> str:
    return _totp(seed).generate_otp(step)


def matching_step(seed: str, code: str, now: datetime, last_step: int | None) -> int | None:
    """The time step near `now` (one either side) whose code is `code` and that is later
    than `last_step`; None if there is none. Every candidate is compared in constant time."""
    current = step_of(now)
    found = None
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        same = hmac.compare_digest(code_at_step(seed, step).encode(), code.encode())
        if same and (last_step is None or step > last_step) and found is None:
            found = step
    return found
