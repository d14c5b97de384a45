"""Keyset pagination of list endpoints: `limit` and an opaque `cursor` in, a JSON array
and a `Link: <...>; rel="next"` header (RFC 8288) out.

A cursor is the URL-safe base64 of a JSON array: the sort key and the id of the last
row of the page before. The next page is the rows strictly after that pair in the
list's order, read through an index on (sort key, id): no OFFSET, no scan of the rows
before. A cursor that does not decode to such a pair is refused with a 400 problem
naming the parameter; one made for another list decodes, and only moves the start.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from flask import request
from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute

from agent.protocol import utc_time
from controller.errors import ServiceError

MAX_CURSOR = 512  # characters: a name of 63 characters and a uuid fit many times over


class InvalidCursor(ServiceError):
    status = 400
    title = "Invalid cursor"
    slug = "invalid-cursor"


@dataclass(frozen=True)
class Page:
    """One page of a list: its items, and the cursor of the next page (None: the last)."""

    items: list[Any]
    next_cursor: str | None
    limit: int

    def map(self, view: Callable[[Any], Any]) -> Page:
        """The same page, each item turned into what the API answers."""
        return replace(self, items=[view(i) for i in self.items])

    def link(self) -> str | None:
        """The Link header's value naming the next page (the request's other query
        parameters kept), or None on the last page."""
        if self.next_cursor is None:
            return None
        args = {k: v for k, v in request.args.items() if k not in ("cursor", "limit")}
        args |= {"cursor": self.next_cursor, "limit": str(self.limit)}
        return f'<{request.path}?{urlencode(args)}>; rel="next"'


def encode(key: Any, row_id: str | int) -> str:
    """The opaque cursor of a page that ended with the row (`key`, `row_id`)."""
    if isinstance(key, datetime):
        key = utc_time(key).isoformat()
    raw = json.dumps([key, row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str, key_type: type) -> tuple[Any, str | int]:
    """(sort key, id) of `cursor`; InvalidCursor naming the parameter when it is not one."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        if base64.urlsafe_b64encode(raw).decode().rstrip("=") != cursor:
            raise ValueError("not canonical base64")
        key, row_id = json.loads(raw)
        if not all(isinstance(v, str | int) and not isinstance(v, bool)
                   for v in (key, row_id)):
            raise ValueError("not a (key, id) pair")
        if key_type is datetime:
            key = utc_time(datetime.fromisoformat(str(key)))
        elif not isinstance(key, key_type):
            raise ValueError("a key of the wrong type")
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as e:
        raise InvalidCursor(
            "query parameter 'cursor' is not a cursor this list gave out; start again "
            "without it", errors=[{"field": "cursor", "message": str(e)}]) from e
    return key, row_id


def in_project(session: Any, stmt: Select[Any], column: InstrumentedAttribute[Any],
               ref: str | None) -> Select[Any]:
    """`stmt` limited to the rows of project `ref` (name or id) when given; NotFound for
    a project the caller does not see."""
    if ref is None:
        return stmt
    from controller.services import tenancy
    return stmt.where(column == tenancy.find_project(session, ref).id)


def page(session: Any, stmt: Select[Any], key: InstrumentedAttribute[Any],
         row_id: InstrumentedAttribute[Any], limit: int, cursor: str | None, *,
         newest_first: bool = False, key_type: type = str) -> Page:
    """The page of `stmt`'s rows in (key, id) order (descending with `newest_first`)
    after `cursor`, at most `limit` of them, and the cursor of the page after it.

    One query of limit + 1 rows: the extra row only tells whether a next page exists."""
    if cursor is not None:
        after_key, after_id = decode(cursor, key_type)
        if newest_first:
            stmt = stmt.where(or_(key < after_key, and_(key == after_key, row_id < after_id)))
        else:
            stmt = stmt.where(or_(key > after_key, and_(key == after_key, row_id > after_id)))
    order = (key.desc(), row_id.desc()) if newest_first else (key, row_id)
    rows = list(session.scalars(stmt.order_by(None).order_by(*order).limit(limit + 1)))
    if len(rows) <= limit:
        return Page(rows, None, limit)
    last = rows[limit - 1]
    return Page(rows[:limit], encode(getattr(last, key.key), getattr(last, row_id.key)), limit)


def page_of(items: list[Any], key: Callable[[Any], str], row_id: Callable[[Any], str],
            limit: int, cursor: str | None) -> Page:
    """The page of `items` (a list built in memory, not rows of one table) in (key, id)
    order after `cursor`, at most `limit` of them, with the same cursors as `page`."""
    ordered = sorted(items, key=lambda i: (key(i), row_id(i)))
    if cursor is not None:
        key_after, id_after = decode(cursor, str)
        after = (key_after, str(id_after))  # one made for another list only moves the start
        ordered = [i for i in ordered if (key(i), row_id(i)) > after]
    if len(ordered) <= limit:
        return Page(ordered, None, limit)
    last = ordered[limit - 1]
    return Page(ordered[:limit], encode(key(last), row_id(last)), limit)
