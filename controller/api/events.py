"""/api/v1/events: the event stream (server-sent events) of what the caller may see.

Each event: `id: <id>`, `event: <type>`, `data: <one-line JSON>` (docs/events.md). A
client resumes with Last-Event-ID (or `?after=`); one resuming from an event no longer
kept gets `stream.reset` first. An idle stream gets a comment every events_keepalive_s,
when the caller's token (or session) is checked too; one revoked or logged out ends the
stream at once (its event reaches the hub), one that expired at the next comment.
"""

from __future__ import annotations

import queue
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Response, request
from pydantic import Field

from controller import schemas
from controller.api.context import region
from controller.api.framework import EVENT_STREAM, ApiBlueprint
from controller.api.problems import problem
from controller.authz import ANY_USER, Caller, Level
from controller.config import SessionLimits
from controller.db.models import ApiToken, as_utc
from controller.eventhub import FELL_BEHIND, RECHECK, Subscriber, message, reset_message
from controller.region import Region
from controller.services import auth as auth_service
from controller.services import events, sessions, tenancy

api = ApiBlueprint("events", "/api/v1", "events")

RECHECK_EVERY_S = 300.0  # the token is read again at least this often, expired or not
# an event id as a browser resends it: ASCII digits only (str.isdigit also takes "²")
LAST_EVENT_ID = re.compile(r"[0-9]{1,18}")


class EventsQuery(schemas.Input):
    after: int | None = Field(default=None, ge=0, le=2**63 - 1,
                              description="Resume after this event id (as Last-Event-ID)")
    types: str | None = Field(default=None, max_length=512,
                              description="Only these kinds, comma-separated: vm,operation")


def parse_types(raw: str | None) -> frozenset[str] | None:
    """The kinds named in `?types=`; ValueError naming any that is not one."""
    if raw is None:
        return None
    kinds = [t.strip() for t in raw.split(",")]
    unknown = [k for k in kinds if k not in events.TYPES]
    if unknown or not kinds:
        raise ValueError(f"unknown event kind(s) {', '.join(repr(k) for k in unknown)}; "
                         f"known: {', '.join(sorted(events.TYPES))}")
    return frozenset(kinds)


@api.route("GET", "/events", access=ANY_USER, query=EventsQuery,
           summary="Follow events (text/event-stream) of the objects you may see",
           responses={200: EVENT_STREAM})
def follow_events(query: EventsQuery) -> Any:
    try:
        kinds = parse_types(query.types)
    except ValueError as e:
        return problem(400, "Bad request", str(e), "invalid-event-types")
    after = query.after
    if after is None and request.headers.get("Last-Event-ID", "").strip():
        raw = request.headers["Last-Event-ID"].strip()
        if not LAST_EVENT_ID.fullmatch(raw):
            return problem(400, "Bad request", f"Last-Event-ID {raw[:40]!r} is not an event id",
                           "invalid-last-event-id")
        after = int(raw)
    caller = tenancy.current()
    assert caller is not None and caller.token_id is not None
    the_region = region()
    watch = _Watch(the_region, caller.token_id, the_region.config.session_limits())
    watch.caller = caller
    stream = _stream(the_region, watch, kinds, after, the_region.config.events_keepalive_s)
    return Response(stream, mimetype="text/event-stream",
                    headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@dataclass
class _Watch:
    """The caller of a stream, read again when its token or user changes, when the token
    is due to expire, and every RECHECK_EVERY_S."""

    region: Region
    token_id: str
    limits: SessionLimits
    caller: Caller | None = None
    deadline: float = 0.0  # time.monotonic() at which to read the token again

    def still_valid(self, force: bool = False) -> bool:
        """Whether the token still lets its caller in (self.caller then renewed)."""
        if not force and time.monotonic() < self.deadline:
            return True
        now = datetime.now(UTC)
        with self.region.reads() as db:
            row = db.get(ApiToken, self.token_id)
            if row is None or row.revoked_at is not None:
                return False
            ends = as_utc(row.expires_at)
            if row.kind == sessions.SESSION:
                ends = min(ends, sessions.absolute_end(as_utc(row.created_at), self.limits))
            if ends <= now:
                return False
            self.caller = auth_service.caller_of(db, row)
        self.deadline = time.monotonic() + min(RECHECK_EVERY_S, (ends - now).total_seconds())
        return True


def _stream(region: Region, watch: _Watch, kinds: frozenset[str] | None, after: int | None,
            keepalive_s: float) -> Iterator[str]:
    assert watch.caller is not None
    if not watch.still_valid(force=True):
        return
    with region.events.subscribe(watch.caller, kinds) as (sub, position, low):
        duplicates: set[int] = set()
        if after is None:
            yield f"id: {position}\n\n"  # sets the client's Last-Event-ID: it resumes here
        else:
            reason = _lost(region, after)
            if reason is not None:
                yield reset_message(position, reason)
            else:
                yield from _catch_up(region, sub, after, position, low, duplicates)
        while True:
            try:
                item = sub.queue.get(timeout=keepalive_s)
            except queue.Empty:
                if not watch.still_valid():
                    return
                yield ": keep-alive\n\n"
                continue
            if item == FELL_BEHIND:
                return  # the client resumes from its Last-Event-ID
            if item == RECHECK:
                if not watch.still_valid(force=True):
                    return
                assert watch.caller is not None
                sub.caller = watch.caller
                continue
            assert not isinstance(item, str)
            # a busy stream is never idle: its token's end is checked here too (the check
            # reads the database only when due)
            if not watch.still_valid():
                return
            # queued before a RECHECK this stream has since taken: the hub chose by the
            # caller's old roles
            if item.id in duplicates or not sub.wants(item):
                continue
            yield item.text


def _lost(region: Region, after: int) -> str | None:
    """Why events after `after` cannot all be sent (pruned, or never made), or None."""
    with region.reads() as db:
        newest, oldest = events.newest_id(db), events.oldest_id(db)
    if after > newest:
        return f"event {after} is not known here (the newest is {newest})"
    if oldest is not None and after < oldest - 1:
        return f"events after {after} are no longer kept (the oldest kept is {oldest})"
    return None


def _catch_up(region: Region, sub: Subscriber, after: int, upto: int, low: int,
              duplicates: set[int]) -> Iterator[str]:
    """The kept events after `after` up to `upto` that `sub` may see; those from `low` on
    may reach its queue too (late commits): their ids go to `duplicates`."""
    start = after
    # a tenant's catch-up reads its projects' events, not the whole region's
    projects = sub.caller.projects_at(Level.READ)
    while True:
        with region.reads() as db:
            rows = events.after(db, start, upto, kinds=sub.kinds, projects=projects)
            texts = []
            for row in rows:
                m = message(row, region.events.project_name(db, row.project_id))
                if sub.wants(m):
                    texts.append(m.text)
                    if m.id >= low:
                        duplicates.add(m.id)
        yield from texts
        if len(rows) < 1000:
            return
        start = rows[-1].id
