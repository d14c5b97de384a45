"""Errors the services raise; the API turns each into an RFC 9457 problem document."""

from __future__ import annotations

from typing import Any

from agent.protocol import NODE_REMOVED


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
