"""The installer's text mode: the same questions as the answer file, one at a time.

Used with `vauban.install=interactive`, or when no answers were given at all. Each
answer is checked as it is typed (the same rules as the answer file, applied to
that key alone), the default or the value already given is shown in brackets, and
the result is the same Answers object the unattended path builds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from appliance.answers import Answers, AnswersError, NetworkAnswers, _typed, merge

Ask = Callable[[str], str]


@dataclass(frozen=True)
class Question:
    key: str  # dotted, as on the kernel command line
    prompt: str
    default: str = ""
    when: Callable[[dict[str, str]], bool] = lambda _given: True


QUESTIONS = [
    Question("controller", "Controller URL (https://host:port)"),
    Question("join_token", "Join token (vauban join-token create)"),
    Question("ca_sha256", "Controller CA SHA-256 fingerprint (64 hex digits)"),
    Question("hostname", "Host name of this node"),
    Question("disk", "Target disk (auto, /dev/disk/by-id/..., serial:X, model:X, size>=NG)",
             "auto"),
    Question("wipe", "Install over a disk that holds data (yes/no)", "no"),
    Question("network.mode", "Management network addressing (dhcp/static)", "dhcp"),
    Question("network.interface", "Management NIC (auto, a name, or mac:aa:bb:..)", "auto"),
    Question("network.address", "Address with prefix length (10.0.0.21/24)",
             when=lambda g: g.get("network.mode") == "static"),
    Question("network.gateway", "Gateway (empty: none)",
             when=lambda g: g.get("network.mode") == "static"),
    Question("network.dns", "DNS servers, comma-separated (empty: none)"),
    Question("network.vlan", "VLAN id 1-4094 (empty: untagged)"),
    Question("root_ssh_keys", "root's SSH public key (empty: none)"),
    Question("timezone", "Time zone", "UTC"),
    Question("hardware_profile", "Hardware profile (compute, gpu, storage, lab)", "compute"),
    Question("ntp_servers", "NTP servers, comma-separated (empty: Debian's pool)"),
]

REQUIRED = {"controller", "join_token", "ca_sha256", "hostname"}


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


def _known(answers: Answers | None) -> dict[str, str]:
    """The values `answers` already holds, keyed as the questions are."""
    if answers is None:
        return {}
    data = answers.model_dump()
    net = data.pop("network")
    flat = {k: _shown(v) for k, v in data.items()}
    flat.update({f"network.{k}": _shown(v) for k, v in net.items()})
    return flat


def _problems_for(key: str, value: str) -> list[str]:
    """What is wrong with `value` for `key` taken alone (other keys' problems ignored)."""
    try:
        typed = _typed(key, value)
    except ValueError as e:
        return [str(e)]
    if key.startswith("network."):
        if key in ("network.address", "network.gateway"):
            return []  # checked with the mode, once all are known
        if key == "network.mode":
            return [] if typed in ("dhcp", "static") else [f"{value!r} is not dhcp or static"]
        try:
            NetworkAnswers.model_validate({key[len("network."):]: typed})
        except ValidationError as e:
            return [str(err["msg"]).removeprefix("Value error, ") for err in e.errors()]
        return []
    try:
        merge({key: value}, None)
    except AnswersError as e:
        return [p for p in e.problems if p.startswith(f"{key}:")]
    return []


def ask(given: Answers | None, prompt: Ask = input,
        say: Callable[[str], None] = print) -> Answers:
    """Ask every question (each answer checked at once, asked again until it is right),
    then check them together; on a problem across keys, say it and ask them all again
    with the answers so far as defaults. Returns valid Answers."""
    known = _known(given)
    say("Vauban node installer: answer each question; Enter keeps the value in brackets.")
    while True:
        values: dict[str, str] = {}
        for q in QUESTIONS:
            if not q.when(values):
                continue
            default = known.get(q.key, q.default)
            while True:
                text = prompt(f"{q.prompt} [{default}]: ").strip() or default
                if not text and q.key in REQUIRED:
                    say(f"  {q.key} is required")
                    continue
                problems = _problems_for(q.key, text) if text else []
                if not problems:
                    break
                say(f"  {'; '.join(problems)}")
            if text:
                values[q.key] = text
        try:
            return merge(values, None)
        except AnswersError as e:
            for p in e.problems:
                say(f"  {p}")
            say("Please answer again.")
            known.update(values)
