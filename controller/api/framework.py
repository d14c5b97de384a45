"""Declared routes: each handler states its input models, its responses and who may call it.

From those declarations the wrapper authenticates the caller, refuses a body
larger than the route accepts before reading it, validates input strictly
(malformed JSON, unknown fields and strings where numbers belong are errors),
and the OpenAPI document is built.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from flask import Blueprint, Response, g, request
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import CoreModeRef, CoreRef, DefsRef, GenerateJsonSchema
from pydantic_core import InitErrorDetails, PydanticCustomError

from controller.api.cookies import SESSION_COOKIE
from controller.api.paging import Page
from controller.api.problems import problem, too_large_problem, validation_problem
from controller.authz import Access

Auth = Literal["user", "node", "public"]
Handler = Callable[..., Any]

MIB = 1024 * 1024
MAX_BODY = 1 * MIB  # default limit of a request body: operator JSON is small
# a response that is a stream of server-sent events: it does not end by itself
EVENT_STREAM = "text/event-stream"


@dataclass(frozen=True)
class RouteSpec:
    method: str
    path: str  # full URL path, Flask syntax
    summary: str
    tag: str
    auth: Auth
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    responses: dict[int, type[BaseModel] | type[list[Any]] | str | None]
    binary_body: bool = False
    # largest body accepted, in bytes; None: the handler sets `request.max_content_length`
    max_body: int | None = MAX_BODY
    access: Access | None = None  # who may call it (a user route must say)
    body_optional: bool = False  # no body at all: the body model's defaults
    # stable name of the operation in the OpenAPI document (generated clients' method names)
    operation_id: str = ""
    description: str = ""


@dataclass
class ApiBlueprint:
    """A Flask blueprint that records a RouteSpec for every route it registers."""

    name: str
    url_prefix: str
    tag: str
    specs: list[RouteSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.blueprint = Blueprint(self.name, __name__, url_prefix=self.url_prefix)

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        responses: dict[int, Any],
        auth: Auth = "user",
        access: Access | None = None,
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        binary_body: bool = False,
        max_body: int | None = MAX_BODY,
        body_optional: bool = False,
        operation_id: str | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register `handler` for `method` on `path`.

        Its OpenAPI operationId is `operation_id`, by default the handler's name in
        camelCase (`list_instances`: `listInstances`); its description the handler's
        docstring, else the summary, each followed by who may call it. The ids are
        checked for uniqueness when the app is made (`check_operation_ids`).

        `access` says who may call a user route (controller/authz.py): one without it is
        refused here, so the API does not start. `max_body` bounds the request body in
        bytes (413 beyond it, unread); a route with `binary_body` streams its own body and
        sets its own limit, so it has none here. With `body_optional` a request without a
        body (none at all) gets the body model's defaults; one with a body is checked as usual.
        """
        if (auth == "user") != (access is not None):
            raise TypeError(f"{method} {self.url_prefix + path}: a user route declares its "
                            "access (controller/authz.py), and only a user route does")

        def decorate(handler: Handler) -> Handler:
            spec = RouteSpec(
                method, self.url_prefix + path, summary, self.tag, auth, body, query,
                responses, binary_body, None if binary_body else max_body, access,
                body_optional, operation_id or _camel(handler.__name__),
                _description(handler.__doc__ or summary, auth, access),
            )
            self.specs.append(spec)
            wrapped = _wrap(handler, spec)
            self.blueprint.add_url_rule(
                path, endpoint=handler.__name__, view_func=wrapped, methods=[method]
            )
            return handler

        return decorate


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(w.capitalize() for w in rest)


def _description(text: str, auth: Auth, access: Access | None) -> str:
    """`text` (a docstring's lines joined), then who may call the route."""
    from inspect import cleandoc
    body = cleandoc(text).strip()
    if not body.endswith("."):
        body += "."
    return f"{body}\n\nWho may call it: {_who(auth, access)}."


def _who(auth: Auth, access: Access | None) -> str:
    from controller.authz import AnyOf, AnyUser, InProject, Region
    if auth == "public":
        return "anyone, without credentials"
    if auth == "node":
        return "a node's agent, by its client certificate (mutual TLS)"
    if isinstance(access, Region):
        return f"a user whose region role grants `{access.perm.value}`"
    if isinstance(access, InProject):
        return (f"a user with {access.level.name.lower()} access to the object's project "
                "(or a region role reaching every project)")
    if isinstance(access, AnyUser):
        return "any logged-in user"
    assert isinstance(access, AnyOf)
    return f"{_who(auth, access.region)}; or {_who(auth, access.project)}"


def check_operation_ids(specs: list[RouteSpec]) -> None:
    """ValueError naming every operationId given to more than one route (a generated
    client could not name both), or one that is not a plain identifier."""
    seen: dict[str, str] = {}
    clashes = []
    for s in specs:
        where = f"{s.method} {s.path}"
        if not re.fullmatch(r"[a-z][A-Za-z0-9]*", s.operation_id):
            raise ValueError(f"{where}: operationId {s.operation_id!r} is not camelCase")
        if s.operation_id in seen:
            clashes.append(f"{s.operation_id} ({seen[s.operation_id]}, {where})")
        seen[s.operation_id] = where
    if clashes:
        raise ValueError("operationIds used twice; give one explicitly (operation_id=): "
                         + "; ".join(clashes))


def _wrap(handler: Handler, spec: RouteSpec) -> Callable[..., Response]:
    from controller.api import auth as api_auth
    from controller.services import audit, tenancy

    @functools.wraps(handler)
    def view(**path_args: Any) -> Response:
        caller = api_auth.authenticate(spec.auth, spec.access)
        if spec.max_body is not None:
            too_large = _refuse_oversize(spec.max_body)
            if too_large is not None:
                return too_large
        kwargs: dict[str, Any] = dict(path_args)
        if spec.query is not None:
            repeated = _repeated_query_parameters()
            if repeated is not None:
                return repeated
            try:
                # query parameters are strings by nature: lax parsing turns "5" into 5
                kwargs["query"] = spec.query.model_validate(request.args.to_dict())
                _check_int64(kwargs["query"])
            except ValidationError as e:
                return validation_problem(e, "query parameter")
        if spec.body is not None and spec.body_optional and _no_body():
            kwargs["body"] = spec.body()
        elif spec.body is not None:
            parsed = _json_body(spec.body, spec.max_body)
            if isinstance(parsed, Response):
                return parsed
            kwargs["body"] = parsed
        # the entries the handler records say from where and with which token it was asked
        with audit.acting(audit.AuditContext(source=request.remote_addr,
                                             token_id=g.get("token_id"))):
            if caller is None:
                return _respond(handler(**kwargs))
            with tenancy.acting_as(caller, spec.access):
                return _respond(handler(**kwargs))

    return view


def _refuse_oversize(limit: int) -> Response | None:
    """A 413 problem if the declared body exceeds `limit`; else None, the limit armed.

    Nothing of the body is read to decide. A body without a declared length (chunked)
    is read to at most one byte past `limit`, which `_json_body` then refuses.
    """
    # werkzeug stops quietly at this maximum: one byte more tells a body that runs
    # past the limit from one that ends on it
    request.max_content_length = limit + 1
    if request.content_length is not None and request.content_length > limit:
        return too_large_problem(request.content_length, limit)
    return None


def _repeated_query_parameters() -> Response | None:
    """422 naming each query parameter given more than once: which one was meant is not
    for the server to guess (every parameter of the API takes one value)."""
    repeated = sorted(name for name, values in request.args.lists() if len(values) > 1)
    if not repeated:
        return None
    errors = [{"field": name, "message": "given more than once; give it once"}
              for name in repeated]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return problem(422, "Invalid input", f"query parameter '{repeated[0]}' is given more than "
                   f"once; give it once{more}", "invalid-input", errors=errors)


def _no_body() -> bool:
    """Whether the request has no body at all (no length, or length 0, and not chunked)."""
    if request.content_length:
        return False
    return "chunked" not in request.headers.get("Transfer-Encoding", "").lower()


def _json_body(model: type[BaseModel], limit: int | None) -> BaseModel | Response:
    """The body parsed and validated as `model` in one step, or the problem to answer.

    Strict: JSON numbers and booleans must be such, not strings; datetimes, enums and
    UUIDs still parse from their JSON string forms. Parsing is bounded (nesting depth,
    integer size) by pydantic's JSON parser, so hostile input is a 400, never a 500;
    an integer that parses but exceeds 64 bits is a 422 naming its field.
    """
    if request.mimetype != "application/json":
        return problem(
            415, "Unsupported media type",
            f"the body must be application/json, not {request.mimetype or 'missing'}",
            "unsupported-media-type",
        )
    raw = request.get_data(cache=False)
    if limit is not None and len(raw) > limit:  # only a body of undeclared length gets here
        return too_large_problem(None, limit)
    if not raw.strip():
        return _malformed("the body is empty; send a JSON object")
    try:
        text = raw.decode()  # decoded here: the JSON parser would not say why it failed
    except UnicodeDecodeError as e:
        return _malformed(f"the body is not UTF-8: {e}")
    try:
        body = model.model_validate_json(text, strict=True)
        _check_int64(body)
        return body
    except ValidationError as e:
        invalid_json = [x for x in e.errors(include_url=False) if x["type"] == "json_invalid"]
        if invalid_json:
            return _malformed(f"the body is not valid JSON: {invalid_json[0]['ctx']['error']}")
        return validation_problem(e, "body")


_INT64 = 2**63


def _check_int64(body: BaseModel) -> None:
    """ValidationError naming every integer of `body` that no database column can hold."""
    errors = [
        InitErrorDetails(type=PydanticCustomError(
            "int_out_of_range", "integer out of range (64 bits, signed)"), loc=loc, input=value)
        for loc, value in _ints(body, ()) if not -_INT64 <= value < _INT64
    ]
    if errors:
        raise ValidationError.from_exception_data(type(body).__name__, errors)


def _ints(value: Any, loc: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], int]]:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield loc, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _ints(getattr(value, name), (*loc, name))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _ints(item, (*loc, i))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _ints(item, (*loc, str(key)))


def _malformed(detail: str) -> Response:
    return problem(400, "Malformed JSON", detail, "malformed-json")


def _respond(result: Any) -> Response:
    if isinstance(result, Response):
        return result
    if isinstance(result, Page):
        answer = _respond(result.items)
        link = result.link()
        if link is not None:
            answer.headers["Link"] = link
        return answer
    body, status = result if isinstance(result, tuple) else (result, 200)
    if status == 204:
        return Response(status=204)
    if isinstance(body, BaseModel):
        text = body.model_dump_json()
    elif isinstance(body, list):
        text = "[" + ",".join(b.model_dump_json() for b in body) + "]"
    else:
        text = json.dumps(body)
    return Response(text, status=status, mimetype="application/json")


def actor() -> str:
    """Who is calling: a user name, or `node:<id>` for an agent."""
    return str(g.get("actor", "anonymous"))


_PATH_PARAM = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")


class _WireNames(GenerateJsonSchema):
    """Components named as pydantic names them, except that a type sharing its name with
    another (this API's SecurityRule and agent.protocol's) is named by `controller.schemas`,
    not by the module of the package it is in: generated clients keep their class names
    whichever file a type moves to."""

    def get_defs_ref(self, core_mode_ref: CoreModeRef) -> DefsRef:
        core_ref, mode = core_mode_ref
        named = re.sub(r"\bcontroller\.schemas\.[a-z_]+\.", "controller.schemas.", core_ref)
        return super().get_defs_ref((CoreRef(named), mode))


def openapi_document(specs: list[RouteSpec], version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document for `specs`, schemas taken from the pydantic models."""
    from pydantic.json_schema import models_json_schema

    from controller.schemas import Problem

    models: dict[type[BaseModel], Literal["validation", "serialization"]] = {
        Problem: "serialization"}
    for s in specs:
        if s.body is not None:
            models[s.body] = "validation"
        for r in s.responses.values():
            inner = _list_item(r)
            if inner is not None:
                models.setdefault(inner, "serialization")
    _, defs = models_json_schema(
        [(m, mode) for m, mode in models.items()], ref_template="#/components/schemas/{model}",
        schema_generator=_WireNames)
    schemas = defs.get("$defs", {})
    for name, schema in schemas.items():
        # a generated client names its classes by title: one per component, none alike
        # ("NodeFailure-Input" and "-Output" would both be "NodeFailure")
        schema["title"] = "".join(w[:1].upper() + w[1:] for w in re.split(r"[^A-Za-z0-9]+",
                                                                           name))
    paths: dict[str, dict[str, Any]] = {}
    for s in specs:
        path = _PATH_PARAM.sub(r"{\1}", s.path)
        paths.setdefault(path, {})[s.method.lower()] = _operation(s)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Vauban region API", "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {"Problem": {
                "description": "An error, as a problem document (RFC 9457)",
                "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
            }},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                # a browser's (POST /api/v1/sessions); a request by it that changes
                # something also needs X-CSRF-Token and the controller's own Origin
                "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE},
                "nodeCertificate": {"type": "mutualTLS"},
            },
        },
    }


def _list_item(r: Any) -> type[BaseModel] | None:
    args = getattr(r, "__args__", None)
    if args:
        r = args[0]
    return r if isinstance(r, type) and issubclass(r, BaseModel) else None


PROBLEM_JSON = "application/problem+json"
PROBLEM_RESPONSE = {"$ref": "#/components/responses/Problem"}
LINK_HEADER = {
    "description": "RFC 8288: `<...?cursor=C&limit=N>; rel=\"next\"`, the URL of the next "
    "page (the other query parameters kept); absent on the last page",
    "schema": {"type": "string"},
}


def _operation(s: RouteSpec) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": s.operation_id, "summary": s.summary,
                          "description": s.description, "tags": [s.tag], "responses": {}}
    op["security"] = {"user": [{"bearer": []}, {"session": []}],
                      "node": [{"nodeCertificate": []}]}.get(s.auth, [])
    params = [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
        for n in _PATH_PARAM.findall(s.path)
    ]
    if s.query is not None:
        schema = s.query.model_json_schema()
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            params.append(
                {"name": name, "in": "query", "required": name in required, "schema": prop}
            )
    if params:
        op["parameters"] = params
    if s.body is not None:
        ref = {"$ref": f"#/components/schemas/{s.body.__name__}"}
        op["requestBody"] = {"required": not s.body_optional,
                             "content": {"application/json": {"schema": ref}}}
    elif s.binary_body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                 "format": "binary"}}},
        }
    for status, r in s.responses.items():
        op["responses"][str(status)] = PROBLEM_RESPONSE if status >= 400 else _response(r)
    if _paged(s):
        op["responses"]["200"]["headers"] = {"Link": LINK_HEADER}
    op["responses"]["4XX"] = PROBLEM_RESPONSE
    op["responses"]["5XX"] = PROBLEM_RESPONSE
    return op


def _paged(s: RouteSpec) -> bool:
    """Whether the route lists a page at a time (its query takes a cursor)."""
    return s.query is not None and "cursor" in s.query.model_fields


def _response(r: Any) -> dict[str, Any]:
    if r is None:
        return {"description": "No content"}
    if r == EVENT_STREAM:
        return {"description": "Server-sent events, until the client leaves (docs/events.md)",
                "content": {EVENT_STREAM: {"schema": {"type": "string"}}}}
    if isinstance(r, str):
        return {"description": r}
    inner = _list_item(r)
    assert inner is not None
    ref = {"$ref": f"#/components/schemas/{inner.__name__}"}
    schema = {"type": "array", "items": ref} if getattr(r, "__args__", None) else ref
    return {"description": inner.__doc__ or inner.__name__,
            "content": {"application/json": {"schema": schema}}}
