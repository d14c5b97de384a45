"""A user's own account: its one-time code seed and its password; and an administrator's
reset of another user's credentials.

Who may call each route: the account routes act on the caller's own user only; the reset
is for who holds identity rights (region-admin).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import g, request

from controller import schemas
from controller.api.context import db, region
from controller.api.framework import ApiBlueprint, actor
from controller.authz import ANY_USER, Perm, Region
from controller.services import account, mfa

api = ApiBlueprint("account", "/api/v1", "account")


@api.route("GET", "/account/totp", access=ANY_USER, summary="Whether I log in with a one-time code",
           responses={200: schemas.TotpStatus})
def totp_status() -> Any:
    session = db()
    user = account.user_named(session, actor())
    return schemas.TotpStatus(username=user.name, enrolled=user.totp_seed is not None,
                              required=mfa.mfa_required(session, user))


@api.route("POST", "/account/totp", access=ANY_USER,
           summary="Enroll a new one-time code seed (pending until confirmed; shown once); "
                   "the password (and the current code, if any) say it is you",
           body=schemas.TotpEnroll, responses={201: schemas.TotpEnrollment})
def enroll_totp(body: schemas.TotpEnroll) -> Any:
    the_region = region()
    account.reauthenticate(
        the_region.reads, the_region.sessions, the_region.config.login_limits(),
        the_region.login_slots, the_region.region_key, actor(), body.password, body.totp,
        request.remote_addr or "unknown", datetime.now(UTC), "user.totp.enroll")
    session = db()
    user = account.user_named(session, actor())
    uri = account.start_enrollment(session, region().region_key, actor(), user)
    session.commit()
    return schemas.TotpEnrollment(username=user.name, provisioning_uri=uri), 201


@api.route("POST", "/account/totp/confirm", access=ANY_USER,
           summary="Activate the pending seed with a code it makes now",
           body=schemas.TotpConfirm, responses={200: schemas.TotpStatus})
def confirm_totp(body: schemas.TotpConfirm) -> Any:
    the_region = region()
    account.confirm_enrollment(the_region.sessions, the_region.region_key, actor(), actor(),
                               body.code, datetime.now(UTC))
    with the_region.reads() as session:
        user = account.user_named(session, actor())
        return schemas.TotpStatus(username=user.name, enrolled=user.totp_seed is not None,
                                  required=mfa.mfa_required(session, user))


@api.route("POST", "/account/password", access=ANY_USER,
           summary="Change my password (my other tokens are revoked)",
           body=schemas.PasswordChange, responses={200: schemas.PasswordChanged})
def change_password(body: schemas.PasswordChange) -> Any:
    the_region = region()
    revoked = account.change_password(
        the_region.reads, the_region.sessions, the_region.config.login_limits(),
        the_region.login_slots, the_region.region_key, actor(), g.get("token_id"),
        body.current_password, body.new_password, body.totp,
        request.remote_addr or "unknown", datetime.now(UTC))
    return schemas.PasswordChanged(username=actor(), tokens_revoked=revoked)


@api.route("POST", "/users/<name>/reset", access=Region(Perm.IDENTITY),
           summary="Reset a user's password (and one-time code seed); shown once, every "
                   "token of the user revoked",
           body=schemas.UserReset, responses={200: schemas.UserResetDone})
def reset_user(name: str, body: schemas.UserReset) -> Any:
    the_region = region()
    done = account.reset_user(the_region.sessions, the_region.login_slots,
                              the_region.region_key, actor(), name, body.totp)
    return schemas.UserResetDone(username=name, password=done.password,
                                 provisioning_uri=done.provisioning_uri,
                                 tokens_revoked=done.tokens_revoked)
