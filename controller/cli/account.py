"""CLI of one's own account and of an administrator's reset: `vauban account totp enroll`,
`vauban account totp confirm`, `vauban account password`, `vauban user reset NAME
[--totp]`; and the one-time code `vauban login` sends.

Secrets (passwords, codes) are asked without echo at a terminal, else read from stdin one
per line; they never appear in arguments unless the operator puts them there (`--totp`).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.cli.client import ApiError, Client
from controller.cli.output import print_json
from controller.services.totp import code_from_uri


def given_code(a: argparse.Namespace) -> str | None:
    """The one-time code of `--totp CODE`, or the current one of the otpauth URI in
    `--totp-file FILE`; None if neither was given."""
    if getattr(a, "totp", None):
        return str(a.totp)
    if getattr(a, "totp_file", None):
        try:
            return code_from_uri(Path(a.totp_file).read_text(), datetime.now(UTC))
        except ValueError as e:
            raise ApiError(0, f"{a.totp_file}: {e}") from e
    return None


def ask_secret(prompt: str) -> str:
    """A secret typed at the terminal without echo, or the next line of stdin."""
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    return sys.stdin.readline().strip()


def code_after_refusal(e: ApiError, a: argparse.Namespace) -> str:
    """The code to retry with after the server said one is needed (`e`): asked at a
    terminal; without one, `e` again with what to do."""
    if not e.problem.get("totp_required") or given_code(a) is not None:
        raise e
    if not sys.stdin.isatty():
        raise ApiError(e.status, f"{e}; give --totp CODE or --totp-file FILE", e.problem)
    return getpass.getpass("one-time code: ").strip()


def log_in(client: Client, a: argparse.Namespace, password: str) -> Any:
    """POST /tokens with the password, and the code when one is given or, at a terminal,
    asked for once the server says one is needed."""
    body: dict[str, Any] = {"username": a.user, "password": password}
    code = given_code(a)
    if code is not None:
        body["totp"] = code
    try:
        return client.post("/tokens", body)
    except ApiError as e:
        body["totp"] = code_after_refusal(e, a)
    return client.post("/tokens", body)


def cmd_totp_enroll(c: Client, a: argparse.Namespace) -> int:
    body: dict[str, Any] = {"password": ask_secret("password: ")}
    code = given_code(a)
    if code is None and c.get("/account/totp")["enrolled"]:
        code = ask_secret("one-time code of your current seed: ").strip()
    if code is not None:
        body["totp"] = code
    r = c.post("/account/totp", body)
    if a.json:
        print_json(r)
        return 0
    print("a new one-time code seed, pending: add this URI to an authenticator app (it is "
          "shown only now), then run 'vauban account totp confirm' with the code it shows")
    print(r["provisioning_uri"])
    return 0


def cmd_totp_confirm(c: Client, a: argparse.Namespace) -> int:
    code = a.code or ask_secret("code of the new seed: ").strip()
    r = c.post("/account/totp/confirm", {"code": code})
    print(f"{r['username']} logs in with the new one-time code seed from now on")
    return 0


def cmd_password(c: Client, a: argparse.Namespace) -> int:
    current = ask_secret("current password: ")
    new = ask_secret("new password (at least 12 characters): ")
    if sys.stdin.isatty() and getpass.getpass("new password again: ") != new:
        raise ApiError(0, "the two new passwords differ; nothing was changed")
    body: dict[str, Any] = {"current_password": current, "new_password": new}
    code = given_code(a)
    if code is None:
        state = c.get("/account/totp")
        if state["enrolled"] or state["required"]:
            code = ask_secret("one-time code: ").strip()
    if code is not None:
        body["totp"] = code
    r = c.post("/account/password", body)
    print(f"password of {r['username']} changed; {r['tokens_revoked']} other token(s) "
          "revoked (this one stays)")
    return 0


def cmd_user_reset(c: Client, a: argparse.Namespace) -> int:
    r = c.post(f"/users/{a.name}/reset", {"totp": a.totp})
    if a.json:
        print_json(r)
        return 0
    print(f"user {r['username']}: credentials reset, {r['tokens_revoked']} token(s) revoked; "
          "give them to the user over a safe channel (shown only now)")
    print(f"  password: {r['password']}")
    if r["provisioning_uri"]:
        print(f"  one-time code seed (otpauth URI): {r['provisioning_uri']}")
    return 0


def add_code_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--totp", metavar="CODE", help="the one-time code (default: asked "
                        "without echo at a terminal when needed)")
    parser.add_argument("--totp-file", metavar="FILE", help="file holding the otpauth:// URI "
                        "of the seed, to compute the code from (automation)")


def account_commands(sub: Any, add: Callable[..., Any], users: Any) -> None:
    """Register `vauban account ...`, and `reset` among the `users` commands."""
    acc = sub.add_parser("account", help="my own account").add_subparsers(dest="cmd",
                                                                          required=True)
    totp = acc.add_parser("totp", help="my one-time code seed").add_subparsers(
        dest="totp_cmd", required=True)
    add_code_options(add(totp, "enroll", cmd_totp_enroll, "make a new seed (pending until "
                         "confirmed; asks your password); its URI is shown once", json_=True))
    add(totp, "confirm", cmd_totp_confirm, "activate the pending seed with a code it "
        "shows").add_argument("--code", help="default: asked without echo")
    add_code_options(add(acc, "password", cmd_password, "change my password (asked without "
                         "echo; my other tokens are revoked)"))
    reset = add(users, "reset", cmd_user_reset, "give a user a new random password (and with "
                "--totp a new one-time code seed); every token of the user is revoked",
                json_=True)
    reset.add_argument("name")
    reset.add_argument("--totp", action="store_true", help="a new one-time code seed too")
