"""Work that would stall the event loop runs on a real thread instead.

The controller serves every connection from one gevent event loop, so a request
that computes for a while (a password hash) or blocks in the kernel (an fsync of
a large upload, reading an image's headers) would hold up every other request,
long-poll and heartbeat meanwhile. `off_loop` runs such work on gevent's thread
pool and waits for it cooperatively; outside a gevent-patched process (tests, the
CLI, `controller init`) it simply calls the function. The work must not use gevent
itself (no subprocess: gevent watches children from the event loop's thread only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _serving_with_gevent() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched("threading"))


def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)`, on a worker thread when serving with gevent. Its exception,
    if any, is raised here."""
    if not _serving_with_gevent():
        return fn(*args, **kwargs)
    import gevent

    result: T = gevent.get_hub().threadpool.apply(fn, args, kwargs)
    return result
