"""XAPI's two wire encodings, as the simulator answers them.

XML-RPC: every answer is a struct whose first member `Status` is `Success` (then `Value`)
or `Failure` (then `ErrorDescription`, an array of strings `[CODE, param…]`). XAPI's `int`
is 64-bit and travels as a string of decimal digits; only the Int32 values (the counts of
`event.from`'s `valid_ref_counts`) travel as `<int>`. JSON-RPC: ints are numbers, errors
are `{"code", "message": CODE, "data": [params]}` (2.0) or `[CODE, params…]` (1.0).
"""

from __future__ import annotations

import json
import xmlrpc.client
from typing import Any


class Int32(int):
    """An XAPI value typed `int` in 32 bits: sent as `<int>`, never as a string."""


class XapiFault(Exception):
    """A call failed the XAPI way: `ErrorDescription` = [code, *params]."""

    def __init__(self, code: str, *params: str) -> None:
        super().__init__(code, *params)
        self.description = [code, *(str(p) for p in params)]


class BadRequest(Exception):
    """The request could not be decoded: HTTP 500, as XAPI answers it."""


def _for_xmlrpc(value: Any) -> Any:
    """`value` with int64s as decimal strings, map keys as strings, None as ""."""
    if isinstance(value, bool) or isinstance(value, Int32):
        return value if isinstance(value, bool) else int(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _for_xmlrpc(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_for_xmlrpc(v) for v in value]
    if value is None:
        return ""
    return value


def _for_json(value: Any) -> Any:
    """`value` as JSON-RPC carries it (datetimes as XAPI's ISO form)."""
    if isinstance(value, xmlrpc.client.DateTime):
        return value.value + "Z" if not value.value.endswith("Z") else value.value
    if isinstance(value, dict):
        return {str(k): _for_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_for_json(v) for v in value]
    return value


def xmlrpc_request(body: bytes) -> tuple[str, list[Any]]:
    """(method, params) of an XML-RPC call; BadRequest when it is not one."""
    try:
        params, method = xmlrpc.client.loads(body, use_builtin_types=False)
    except Exception as e:
        raise BadRequest(f"not an XML-RPC call: {e}") from e
    if not method:
        raise BadRequest("XML-RPC call without a method name")
    return method, list(params)


def _response(struct: dict[str, Any]) -> bytes:
    # compact, as xapi writes it: Xen Orchestra's parser keeps whitespace between tags
    # as text nodes and fails on them (a `>` or `<` inside a value is escaped, so a
    # literal ">\n<" only ever separates two tags)
    body = xmlrpc.client.dumps((struct,), methodresponse=True)
    return body.replace(">\n<", "><").strip().encode()


def xmlrpc_success(value: Any) -> bytes:
    """An XML-RPC methodResponse {Status: Success, Value: value}."""
    return _response({"Status": "Success", "Value": _for_xmlrpc(value)})


def xmlrpc_failure(description: list[str]) -> bytes:
    """An XML-RPC methodResponse {Status: Failure, ErrorDescription: description}."""
    return _response({"Status": "Failure", "ErrorDescription": list(description)})


def jsonrpc_request(body: bytes) -> tuple[str, list[Any], Any, str]:
    """(method, params, id, version) of a JSON-RPC call; BadRequest otherwise."""
    try:
        call = json.loads(body)
        method, params = call["method"], call.get("params", [])
    except Exception as e:
        raise BadRequest(f"not a JSON-RPC call: {e}") from e
    if not isinstance(method, str) or not isinstance(params, list):
        raise BadRequest("JSON-RPC call needs a string method and a list of params")
    return method, params, call.get("id"), str(call.get("jsonrpc", "1.0"))


def jsonrpc_success(value: Any, call_id: Any, version: str) -> bytes:
    """A JSON-RPC answer carrying `value` in the call's version."""
    answer: dict[str, Any] = {"result": _for_json(value), "id": call_id}
    if version == "2.0":
        answer["jsonrpc"] = "2.0"
    else:
        answer["error"] = None
    return json.dumps(answer).encode()


def jsonrpc_failure(description: list[str], call_id: Any, version: str) -> bytes:
    """A JSON-RPC error answer: 2.0's {code, message, data}, 1.0's [CODE, params…]."""
    if version == "2.0":
        error = {"code": 1, "message": description[0], "data": description[1:]}
        return json.dumps({"jsonrpc": "2.0", "error": error, "id": call_id}).encode()
    return json.dumps({"result": None, "error": description, "id": call_id}).encode()
