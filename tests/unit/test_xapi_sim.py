"""The XAPI simulator's own rules, without HTTP (tests/xapi_sim): tokens, coalesced
events, int64 on the wire, a blocked event.from ended by session expiry."""

from __future__ import annotations

import json
import threading
import xmlrpc.client

import pytest

from tests.xapi_sim import api, wire
from tests.xapi_sim.events import event_from, format_token, parse_token
from tests.xapi_sim.model import Store


def test_tokens_are_two_zero_padded_generations() -> None:
    assert format_token(42) == "00000000000000000042,00000000000000000000"
    assert parse_token(format_token(42)) == 42
    assert parse_token("") == 0
    for bad in ("42", "a,b", "1,2,3", 7):
        with pytest.raises(wire.XapiFault) as e:
            parse_token(bad)
        assert e.value.description == ["EVENT_FROM_TOKEN_PARSE_FAILURE", str(bad)]


def _store_with_session() -> tuple[Store, str]:
    store = Store("root", "pw")
    return store, store.login("root", "pw", "test")


def test_events_are_coalesced_per_object() -> None:
    store, session = _store_with_session()
    start = event_from(store, session, ["vm"], "", 0.0)["token"]
    vm = store.add("VM", {"name_label": "a"})
    store.modify("VM", vm, name_label="b")
    kept = store.add("VM", {"name_label": "c"})
    store.remove("VM", kept)
    result = event_from(store, session, ["VM"], start, 0.0)
    ops = [(e["operation"], e.get("snapshot", {}).get("name_label")) for e in result["events"]]
    assert ops == [("add", "b"), ("del", None)]
    assert result["valid_ref_counts"] == {"vm": 1}
    assert isinstance(result["valid_ref_counts"]["vm"], wire.Int32)
    again = event_from(store, session, ["vm"], result["token"], 0.0)
    assert again["events"] == [] and again["token"] == result["token"]


def test_session_expiry_ends_a_blocked_event_from() -> None:
    store, session = _store_with_session()
    token = event_from(store, session, ["*"], "", 0.0)["token"]
    ended: list[list[str]] = []

    def blocked() -> None:
        try:
            event_from(store, session, ["*"], token, 3600.0)
        except wire.XapiFault as e:
            ended.append(e.description)

    waiter = threading.Thread(target=blocked)
    waiter.start()
    with store.waiting:  # the waiter holds `cond` from here until it waits on it
        store.waiting.wait_for(lambda: store.waiters == 1)
    store.expire_sessions()
    waiter.join()
    assert ended == [["SESSION_INVALID", session]]


def test_int64_is_a_string_on_xml_rpc_and_counts_are_ints() -> None:
    body = wire.xmlrpc_success({"virtual_size": 5 * 1024**4, "counts": wire.Int32(3),
                                "ok": True})
    assert b"<string>5497558138880</string>" in body and b"<int>3</int>" in body
    (answer,), _ = xmlrpc.client.loads(body)
    assert answer == {"Status": "Success",
                      "Value": {"virtual_size": "5497558138880", "counts": 3, "ok": True}}


def test_refs_differ_per_session_and_unknown_methods_fail_as_xapi_does() -> None:
    store, one = _store_with_session()
    two = store.login("root", "pw", "test")
    store.add("pool", {"name_label": "p"})
    assert api.call(store, "pool.get_all", [one], None) != api.call(store, "pool.get_all",
                                                                     [two], None)
    with pytest.raises(wire.XapiFault) as e:
        api.call(store, "VM.frobnicate", [one], None)
    assert e.value.description == ["MESSAGE_METHOD_UNKNOWN", "VM.frobnicate"]
    with pytest.raises(wire.XapiFault) as e:
        api.call(store, "session.login_with_password", ["root", "pw"], "127.0.0.9")
    assert e.value.description == ["HOST_IS_SLAVE", "127.0.0.9"]


def test_jsonrpc_errors_in_either_version() -> None:
    two = json.loads(wire.jsonrpc_failure(["HOST_IS_SLAVE", "10.0.0.2"], 7, "2.0"))
    assert two == {"jsonrpc": "2.0", "id": 7,
                   "error": {"code": 1, "message": "HOST_IS_SLAVE", "data": ["10.0.0.2"]}}
    one = json.loads(wire.jsonrpc_failure(["HOST_IS_SLAVE", "10.0.0.2"], 7, "1.0"))
    assert one == {"result": None, "error": ["HOST_IS_SLAVE", "10.0.0.2"], "id": 7}
    ok = json.loads(wire.jsonrpc_success({"virtual_size": 5 * 1024**4}, 7, "2.0"))
    assert ok == {"jsonrpc": "2.0", "id": 7, "result": {"virtual_size": 5 * 1024**4}}
    with pytest.raises(wire.BadRequest):
        wire.jsonrpc_request(b"<methodCall/>")
