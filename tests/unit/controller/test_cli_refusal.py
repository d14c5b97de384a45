"""How the CLI turns an API refusal into the message it prints."""

from __future__ import annotations

import json

import requests

from controller.cli.client import refusal


def _answer(status: int, body: bytes, reason: str = "Conflict") -> requests.Response:
    r = requests.Response()
    r.status_code, r.reason, r._content = status, reason, body
    return r


def test_a_problem_document_gives_its_detail() -> None:
    problem = {"type": "about:blank", "title": "Conflict", "status": 409,
               "detail": "the name web-1 is taken"}
    e = refusal(_answer(409, json.dumps(problem).encode()))
    assert (e.status, str(e)) == (409, "the name web-1 is taken")
    assert e.problem == problem


def test_a_body_that_is_no_problem_document_gives_the_status() -> None:
    # a JSON list made the CLI fail with AttributeError ('list' has no 'get') before
    for body in (b"<html>bad gateway</html>", b'["not", "a", "problem"]', b""):
        e = refusal(_answer(502, body, "Bad Gateway"))
        assert (e.status, str(e), e.problem) == (502, "502 Bad Gateway", {})
