"""Read the event stream (/api/v1/events) through Flask's test client."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from werkzeug.test import TestResponse

IDLE_COMMENTS = 8  # at 15 s each


@dataclass(frozen=True)
class Sse:
    """One block of the stream: an event (type and JSON data), an id alone, or a comment."""

    id: int | None
    type: str | None
    data: dict[str, Any] | None
    comment: str | None = None


def parse_block(block: str) -> Sse:
    fields: dict[str, str] = {}
    comment = None
    for line in block.split("\n"):
        if line.startswith(":"):
            comment = line[1:].strip()
        elif line:
            name, _, value = line.partition(": ")
            fields[name] = value
    return Sse(int(fields["id"]) if "id" in fields else None, fields.get("event"),
               json.loads(fields["data"]) if "data" in fields else None, comment)


class Stream:
    """An open stream, read block by block (each block arrives as one chunk)."""

    def __init__(self, response: TestResponse) -> None:
        assert response.status_code == 200, response.get_data()
        assert response.mimetype == "text/event-stream"
        self.response = response
        self._chunks: Iterator[bytes] = iter(response.response)
        self.last_id: int | None = None
        self.ended = False

    def blocks(self) -> Iterator[Sse]:
        buffer = ""
        for chunk in self._chunks:
            buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                sse = parse_block(block)
                if sse.id is not None:
                    self.last_id = sse.id
                yield sse
        self.ended = True

    def next_event(self) -> Sse:
        """The next event (ids alone and comments skipped); AssertionError if the stream
        ends first, or sends only keep-alives for a while (instead of hanging the test)."""
        idle = 0
        for sse in self.blocks():
            if sse.type is not None:
                return sse
            idle += sse.comment == "keep-alive"
            if idle > IDLE_COMMENTS:
                raise AssertionError(f"no event came in {IDLE_COMMENTS} keep-alives")
        raise AssertionError("the stream ended")

    def until(self, found: Callable[[Sse], bool]) -> list[Sse]:
        """Every event up to and including the first that `found` accepts."""
        seen = []
        while True:
            sse = self.next_event()
            seen.append(sse)
            if found(sse):
                return seen

    def start(self) -> int:
        """The id the stream starts from (its first block: an id alone)."""
        first = next(self.blocks())
        assert first.id is not None and first.type is None, first
        return first.id

    def close(self) -> None:
        self.response.close()

    def drain(self) -> list[Sse]:
        """What is left until the stream ends (it must end)."""
        return list(self.blocks())
