"""The agent's asking loops (agent.client): answers, retries, refusal, stop."""

from __future__ import annotations

import threading

import pytest

from agent.client import ControllerUnavailable, Refused, ask_until_answered, keep_asking


class Script:
    """Answers `ask` from a list: an exception is raised, anything else returned; the
    stop event is set once the list is used up."""

    def __init__(self, steps: list[object], stopping: threading.Event) -> None:
        self.steps, self.stopping = list(steps), stopping

    def __call__(self) -> object:
        step = self.steps.pop(0)
        if not self.steps:
            self.stopping.set()
        if isinstance(step, Exception):
            raise step
        return step


def test_an_unavailable_controller_is_asked_again_after_a_growing_delay() -> None:
    stopping = threading.Event()
    ask = Script([ControllerUnavailable("down"), ControllerUnavailable("down"), "a",
                  ControllerUnavailable("down"), "b"], stopping)
    taken: list[object] = []
    delays: list[int] = []
    keep_asking("test", stopping, ask, taken.append, lambda e: None,
                lambda failures: delays.append(failures) or 0.0)
    assert taken == ["a", "b"]
    # the count of failures in a row starts again after an answer
    assert delays == [1, 2, 1]


def test_a_refusal_ends_the_loop_and_is_told() -> None:
    stopping = threading.Event()
    refusal = Refused("node removed")
    ask = Script(["a", refusal, "never"], stopping)
    taken: list[object] = []
    told: list[Refused] = []
    keep_asking("test", stopping, ask, taken.append, told.append, lambda n: 0.0)
    assert taken == ["a"] and told == [refusal]
    assert ask.steps == ["never"]


def test_settings_are_asked_for_until_the_controller_answers() -> None:
    stopping = threading.Event()
    answers = iter([ControllerUnavailable("down"), ControllerUnavailable("down"), "settings"])

    def ask() -> object:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert ask_until_answered("settings", stopping, ask, max_backoff=0.0) == "settings"


def test_asking_for_settings_ends_with_none_once_stopped_and_raises_a_refusal() -> None:
    stopping = threading.Event()
    down = Script([ControllerUnavailable("down")], stopping)  # sets `stopping` as it fails
    assert ask_until_answered("settings", stopping, down, max_backoff=0.0) is None
    refused = Script([Refused("not a pool"), "never"], threading.Event())
    with pytest.raises(Refused, match="not a pool"):
        ask_until_answered("settings", threading.Event(), refused)
    assert refused.steps == ["never"]
