"""Bases of the API's wire types, the names and times clients give, and problems."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

from agent.protocol import StrictInput


def _in_utc(value: datetime) -> datetime:
    """`value` in UTC; ValueError (a 422) where UTC cannot hold it (year 1 east of Greenwich,
    year 9999 west of it), which datetime raises as OverflowError."""
    try:
        return value.astimezone(UTC)
    except OverflowError as e:
        raise ValueError(f"{value.isoformat()} is out of range in UTC") from e


# a time a client gives, with its zone; handed on in UTC
UtcInput = Annotated[AwareDatetime, AfterValidator(_in_utc)]


NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


TOTP_CODE = r"^[0-9]{6}$"  # a one-time code: exactly 6 ASCII digits


NAME_RULE = "1-63 characters: lowercase letters, digits and '-', not starting or ending with '-'"


def _name_of(value: Any) -> Any:
    """A project row read from an object's attributes, as its name."""
    return getattr(value, "name", value)


# the project an object belongs to, by name (None: shared with every project)
ProjectName = Annotated[str | None, BeforeValidator(_name_of),
                        Field(description="Its project (null: shared with every project)")]


PROJECT_INPUT = Field(default=None, min_length=1, max_length=63, examples=["web-shop"],
                      description="Project (name or id); default: yours if you have one, "
                                  "else 'default' for a region admin")


class Input(StrictInput):
    """Base of client input: unknown fields and NUL characters are errors, never silently
    ignored or left for the database to fail on."""


class Output(BaseModel):
    """Base of what a client reads back; timestamps are `UtcDatetime`, so they carry a zone."""

    model_config = ConfigDict(from_attributes=True)


class ProblemField(BaseModel):
    """One invalid input of a request."""

    field: str = Field(description="Where: a body field path (dots between levels), or a "
                       "query parameter's name", examples=["vcpus", "cursor"])
    message: str = Field(examples=["Input should be greater than or equal to 1"])


class Problem(BaseModel):
    """An error (RFC 9457, application/problem+json): every 4xx and 5xx answer is one.
    `type` is stable per kind of error; `detail` says what went wrong in this request."""

    model_config = ConfigDict(extra="allow")  # members a kind of error adds are kept

    type: str = Field(examples=["https://vauban.dev/problems/not-found"],
                      description="URI naming the kind of error; stable, branch on it")
    title: str = Field(examples=["Not found"], description="Short phrase of the kind")
    status: int = Field(ge=400, le=599, examples=[404], description="The HTTP status")
    detail: str = Field(examples=["instance 'web' does not exist"],
                        description="What went wrong in this request, for a person")
    instance: str = Field(examples=["/api/v1/instances/web"],
                          description="The request's path (secrets in it redacted)")
    errors: list[ProblemField] | None = Field(
        default=None, description="422, a bad cursor: each invalid input")
    retry_after_s: int | None = Field(
        default=None, description="429, 503: seconds to wait (as Retry-After)")
    max_bytes: int | None = Field(default=None, description="413: the largest body accepted")
    reasons: dict[str, str] | None = Field(
        default=None, description="No node can host it: why not, per node")


class PageQuery(Input):
    """A page of a list (docs/architecture.md, "Lists"): at most `limit` items after
    `cursor`; the answer's `Link: <...>; rel="next"` header names the next page."""

    limit: int = Field(default=100, ge=1, le=1000, description="Most items in the page")
    cursor: str | None = Field(
        default=None, min_length=1, max_length=512, pattern=r"^[A-Za-z0-9_-]+$",
        description="Where the page starts: the `cursor` of the Link header of the page "
        "before (opaque); absent, the first page")
