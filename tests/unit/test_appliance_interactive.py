"""The installer's text mode: the same answers, asked one by one, each checked."""

from __future__ import annotations

from collections.abc import Iterator

from appliance.answers import merge
from appliance.interactive import ask

CA = "ef" * 32


def replies(*texts: str):  # type: ignore[no-untyped-def]
    it: Iterator[str] = iter(texts)
    asked: list[str] = []

    def prompt(question: str) -> str:
        asked.append(question)
        return next(it)
    return prompt, asked


def test_asks_and_rechecks_bad_answers() -> None:
    said: list[str] = []
    prompt, asked = replies(
        "http://c:8443", "https://c:8443",  # controller: http refused, then right
        "tok-12345678", CA, "Bad_Name", "node-5",
        "", "", "static", "", "10.0.0.5/24", "10.0.0.1", "", "5000", "12", "", "", "", "")
    a = ask(None, prompt, said.append)
    assert a.controller == "https://c:8443" and a.hostname == "node-5"
    assert a.network.mode == "static" and a.network.address == "10.0.0.5/24"
    assert a.network.vlan == 12 and a.disk == "auto" and a.wipe is False
    assert any("https" in s for s in said) and any("host name" in s for s in said)
    assert any("less than or equal to 4094" in s for s in said)
    assert asked[0].endswith("[]: ")


def test_given_answers_are_the_defaults() -> None:
    given = merge({}, {"controller": "https://c:8443", "join_token": "tok-12345678",
                       "ca_sha256": CA, "hostname": "node-9", "disk": "serial:X1"})
    prompt, asked = replies(*([""] * 20))
    a = ask(given, prompt, lambda _s: None)
    assert a == given
    assert any("[serial:X1]" in q for q in asked)
