"""`event.from` and `event.inject` over the store's generations.

A token is `"%020d,%020d"` (object generation, message generation), as xapi writes it;
`""` means "from the beginning". Events are coalesced per object: one per object changed
since the token, `add` if it was created since, `mod` if only modified, `del` (without a
snapshot) if destroyed since. A call blocks on the store's condition variable until one
of its classes changes, its timeout passes, its session is destroyed (SESSION_INVALID)
or the test asks for EVENTS_LOST.
"""

from __future__ import annotations

import time
from typing import Any

from tests.xapi_sim.model import CLASSES, Obj, Session, Store, class_named
from tests.xapi_sim.wire import Int32, XapiFault


def format_token(generation: int) -> str:
    """The token of position `generation` (message generation 0: no messages here)."""
    return f"{generation:020d},{0:020d}"


def parse_token(token: Any) -> int:
    """The object generation a token names; EVENT_FROM_TOKEN_PARSE_FAILURE otherwise."""
    if token == "":
        return 0
    parts = token.split(",") if isinstance(token, str) else []
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise XapiFault("EVENT_FROM_TOKEN_PARSE_FAILURE", str(token))
    return int(parts[0])


def _wanted(classes: Any) -> set[str]:
    """The classes a `classes` argument names (`*` = all; `class/ref` = that class)."""
    if not isinstance(classes, list):
        raise XapiFault("FIELD_TYPE_ERROR", "classes")
    wanted: set[str] = set()
    for item in classes:
        name = str(item).split("/", 1)[0]
        if name == "*":
            wanted.update(CLASSES)
        elif (cls := class_named(name)) is not None:
            wanted.add(cls)
    return wanted


def _event(store: Store, sess: Session, obj: Obj, since: int) -> tuple[int, dict[str, Any]]:
    """(generation, event) of `obj` as seen from position `since`."""
    ref = sess.ref((obj.cls, obj.uuid))
    base = {"class": obj.cls.lower(), "ref": ref, "timestamp": "0.0"}
    if obj.deleted:
        return obj.deleted, {**base, "id": str(obj.deleted), "operation": "del"}
    operation = "add" if obj.created > since else "mod"
    snapshot = store.record(sess, obj)
    return obj.modified, {**base, "id": str(obj.modified), "operation": operation,
                          "snapshot": snapshot}


def _events_since(store: Store, sess: Session, wanted: set[str],
                  since: int) -> list[dict[str, Any]]:
    """The coalesced events of `wanted` classes after `since`, oldest first."""
    changed = [o for o in store.objects.values() if o.cls in wanted and o.modified > since]
    # an object made and destroyed since the token may still have been fetched by the
    # client's get_all_records after its inject token: its `del` is sent too
    gone = [o for o in store.tombstones if o.cls in wanted and o.deleted > since]
    events = [_event(store, sess, o, since) for o in (*changed, *gone)]
    return [e for _, e in sorted(events, key=lambda ge: ge[0])]


def _blocked(store: Store, change: int) -> None:
    with store.waiting:
        store.waiters += change
        store.waiting.notify_all()


def event_from(store: Store, handle: Any, classes: Any, token: Any,
               timeout: Any) -> dict[str, Any]:
    """`event.from(session, classes, token, timeout)` as xapi answers it."""
    wanted, since = _wanted(classes), parse_token(token)
    try:
        deadline = time.monotonic() + max(0.0, float(timeout))
    except (TypeError, ValueError) as e:
        raise XapiFault("FIELD_TYPE_ERROR", "timeout") from e
    with store.cond:
        while True:
            sess = store.session(handle)
            if store.events_lost_next:
                store.events_lost_next = False
                raise XapiFault("EVENTS_LOST")
            events = _events_since(store, sess, wanted, since)
            remaining = deadline - time.monotonic()
            if events or remaining <= 0:
                break
            _blocked(store, +1)
            try:
                store.cond.wait(remaining)
            finally:
                _blocked(store, -1)
        counts = {c.lower(): Int32(len(store.live(c))) for c in sorted(wanted)}
        return {"events": events, "valid_ref_counts": counts,
                "token": format_token(store.gen if events else since)}


def event_inject(store: Store, handle: Any, cls_name: Any, ref: Any) -> str:
    """`event.inject(session, class, ref)`: a `mod` on that object; the token before it."""
    with store.cond:
        sess = store.session(handle)
        cls = class_named(str(cls_name))
        if cls is None:
            raise XapiFault("CLASS_NOT_FOUND", str(cls_name))
        obj = store.resolve(sess, cls, ref)
        return format_token(store.touch((obj.cls, obj.uuid)))
