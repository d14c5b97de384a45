"""Errors the services raise; the API turns each into an RFC 9457 problem document."""

from __future__ import annotations

import math
from typing import Any

from agent.protocol import NODE_REMOVED, WRONG_AGENT


class ServiceError(Exception):
    """Base: `status` is the HTTP status the API answers with, `title` a stable short phrase."""

    status = 400
    title = "Bad request"
    slug = "bad-request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InvalidInput(ServiceError):
    status = 422
    title = "Invalid input"
    slug = "invalid-input"


class NotFound(ServiceError):
    status = 404
    title = "Not found"
    slug = "not-found"


class Conflict(ServiceError):
    status = 409
    title = "Conflict"
    slug = "conflict"


class WrongAgent(Conflict):
    """An agent of the wrong kind for its node asked for its settings: the agent stops on
    this type (retrying cannot help; its configuration must change)."""

    title = "Wrong agent for this node"
    slug = WRONG_AGENT


class Unreachable(ServiceError):
    """A system outside the controller that this request must talk to (an XCP-ng pool)
    could not be reached; nothing was changed. Trying again later may help."""

    status = 502
    title = "Unreachable"
    slug = "unreachable"


class NoValidHost(ServiceError):
    """The scheduler found no node for the request; `extra['reasons']` says why, per node."""

    status = 409
    title = "No node can host this VM"
    slug = "no-valid-host"


class Unauthorized(ServiceError):
    status = 401
    title = "Unauthorized"
    slug = "unauthorized"


class Forbidden(ServiceError):
    status = 403
    title = "Forbidden"
    slug = "forbidden"


class NodeRemoved(Forbidden):
    """A removed node's certificate: the agent stops on this type (retrying cannot help)."""

    title = "Node removed from the region"
    slug = NODE_REMOVED


class TooManyRequests(ServiceError):
    """The caller must wait: `retry_after_s` goes out as the Retry-After header (whole
    seconds) and in the problem document."""

    status = 429
    title = "Too many requests"
    slug = "too-many-requests"

    def __init__(self, detail: str, retry_after_s: float, **extra: Any) -> None:
        super().__init__(detail, retry_after_s=max(1, math.ceil(retry_after_s)), **extra)
        self.retry_after_s = int(self.extra["retry_after_s"])


class Unavailable(TooManyRequests):
    """The controller is too busy for this now; the caller may retry after `retry_after_s`."""

    status = 503
    title = "Service unavailable"
    slug = "unavailable"
