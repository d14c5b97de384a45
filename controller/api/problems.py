"""RFC 9457 problem documents for every error the API returns, including Flask's own."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, json, request
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import ClientDisconnected, HTTPException

from controller.errors import ServiceError, TooManyRequests
from controller.serving import redact_path

PROBLEM_BASE = "https://vauban.dev/problems/"


def problem(status: int, title: str, detail: str, slug: str, **extra: Any) -> Response:
    body = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": redact_path(request.path),  # a console ticket in it is a secret
        **extra,
    }
    return Response(json.dumps(body), status=status, mimetype="application/problem+json")


def validation_problem(err: ValidationError, where: str) -> Response:
    """422 with one entry per invalid field, and a detail that names the first one."""
    errors = []
    for e in err.errors(include_url=False, include_context=False, include_input=False):
        loc = ".".join(str(p) for p in e["loc"]) or where
        errors.append({"field": loc, "message": _message(e["type"], e["msg"])})
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return problem(
        422,
        "Invalid input",
        f"{where} field '{first['field']}': {first['message']}{more}",
        "invalid-input",
        errors=errors,
    )


def too_large_problem(size: int | None, limit: int | None) -> Response:
    """413 naming the route's limit (and the declared size, when the client declared one)."""
    declared = f"the body is {size} bytes" if size is not None else "the body is too large"
    accepts = f"at most {limit} bytes" if limit is not None else "a smaller body"
    return problem(413, "Content too large", f"{declared}; {request.path} accepts {accepts}",
                   "content-too-large", max_bytes=limit)


def _message(kind: str, msg: str) -> str:
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "field required"
    return msg


def install_error_handlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def _service_error(err: ServiceError) -> Response:
        answer = problem(err.status, err.title, err.detail, err.slug, **err.extra)
        if isinstance(err, TooManyRequests):
            answer.headers["Retry-After"] = str(err.retry_after_s)
        return answer

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Response:
        status = err.code or 500
        title = err.name
        detail = err.description or title
        if status == 413:  # a body without declared length ran past the route's limit
            return too_large_problem(None, request.max_content_length)
        if status == 405:
            detail = f"method {request.method} is not allowed on {request.path}"
        elif status == 404:
            detail = f"no such endpoint: {request.path}"
        answer = problem(status, title, detail, title.lower().replace(" ", "-"))
        # headers the status requires (RFC 9110), such as Allow on a 405
        for name, value in err.get_headers():
            if name.lower() != "content-type":
                answer.headers[name] = value
        return answer

    @app.errorhandler(ClientDisconnected)
    def _body_cut_short(err: ClientDisconnected) -> Response:
        # werkzeug turns a failed body read into this; the idle deadline is one such failure
        if isinstance(err.__context__, TimeoutError):
            return problem(408, "Request timeout", "the request body did not arrive in time; "
                           "send it without pausing", "request-timeout")
        return problem(400, "Incomplete body", "the request body ended before the length "
                       "it declared", "incomplete-body")

    @app.errorhandler(PoolTimeout)
    def _no_connection(err: PoolTimeout) -> Response:
        # every database connection is in use: the caller retries, nothing failed for good
        app.logger.warning("no database connection free for %s %s: %s", request.method,
                           redact_path(request.path), err)
        answer = problem(503, "Service unavailable", "the controller's database connections "
                         "are all in use; try again shortly", "unavailable", retry_after_s=1)
        answer.headers["Retry-After"] = "1"
        return answer

    @app.errorhandler(IntegrityError)
    def _integrity(err: IntegrityError) -> Response:
        # a concurrent request won the race for a unique name
        return problem(409, "Conflict", "the request conflicts with an object created meanwhile",
                       "conflict")

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        app.logger.exception("unhandled error on %s %s", request.method,
                             redact_path(request.path))
        return problem(500, "Internal error", "the controller failed; see its log", "internal")
