"""The agent's one long-poll loop (agent.client.keep_asking): answers, retries, refusal."""

from __future__ import annotations

import threading

from agent.client import ControllerUnavailable, Refused, keep_asking


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
