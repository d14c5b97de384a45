"""The read-only checks of `vauban xcpng check`: what a pool answers to the calls Vauban
makes, as facts a transcript can hold (names, wire types, counts; never a value that
grants access).

Each check returns a `Finding`: its outcome (ok, differs, missing, skipped), why in
words, and the data behind it. Nothing here changes the pool.
"""

from __future__ import annotations

import re
import ssl
import xmlrpc.client
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agent.drivers.xapi.errors import XapiError, parse_result
from agent.drivers.xapi.events import WATCHED
from agent.drivers.xapi.pool import PoolClient
from agent.drivers.xapi.transport import fingerprint_of, format_fingerprint

# the methods Vauban calls (agent/drivers/xapi, the xapi hypervisor and storage drivers,
# the controller's enrollment); Async.* ones are called as tasks
PLAIN_METHODS = (
    "session.login_with_password", "session.logout", "event.from", "event.inject",
    "pool.get_all", "host.get_server_certificate", "task.create", "task.get_uuid",
    "task.get_record", "task.destroy", "console.get_record", "VM.get_uuid",
    "VM.get_by_uuid", "VM.get_record", "VM.get_consoles", "VM.set_memory_limits",
    "VM.set_VCPUs_max", "VM.set_VCPUs_at_startup", "VM.add_to_platform",
    "VM.remove_from_platform",
    "VM.set_HVM_boot_params", "VM.add_to_other_config", "VM.remove_from_other_config",
    "VM.destroy", "VDI.create", "VDI.destroy", "VDI.get_uuid", "VDI.get_by_uuid",
    "VDI.set_name_label", "VDI.add_to_other_config", "VDI.remove_from_other_config",
    "VBD.create", "VIF.create", "SR.get_by_uuid", "network.get_by_uuid",
    *(f"{c}.get_all_records" for c in WATCHED),
)
ASYNC_METHODS = ("VM.clone", "VM.provision", "VM.start", "VM.clean_shutdown",
                 "VM.hard_shutdown", "VM.hard_reboot", "VDI.clone", "VDI.copy",
                 "VDI.resize")

# the fields Vauban reads, per watched class, and the wire type it expects of each
_S, _I, _B, _F, _D, _L, _T, _R = ("string", "int-as-string", "bool", "float", "dict",
                                  "list", "datetime", "ref")
READ_FIELDS: dict[str, dict[str, str]] = {
    "pool": {"uuid": _S, "name_label": _S, "master": _R, "default_SR": _R},
    "host": {"uuid": _S, "name_label": _S, "address": _S, "enabled": _B, "metrics": _R,
             "cpu_info": _D, "software_version": _D},
    "host_metrics": {"uuid": _S, "memory_total": _I, "memory_free": _I, "live": _B},
    "SR": {"uuid": _S, "name_label": _S, "type": _S, "physical_size": _I,
           "physical_utilisation": _I, "sm_config": _D, "other_config": _D},
    "SM": {"uuid": _S, "type": _S, "capabilities": _L, "features": _D},
    "network": {"uuid": _S, "name_label": _S, "bridge": _S, "MTU": _I},
    "VM": {"uuid": _S, "name_label": _S, "power_state": _S, "is_a_template": _B,
           "is_a_snapshot": _B, "is_control_domain": _B, "other_config": _D,
           "resident_on": _R, "memory_static_max": _I, "VCPUs_max": _I,
           "HVM_boot_params": _D, "platform": _D, "VBDs": _L},
    "VDI": {"uuid": _S, "name_label": _S, "SR": _R, "virtual_size": _I,
            "physical_utilisation": _I, "other_config": _D, "sm_config": _D, "VBDs": _L},
    "VBD": {"uuid": _S, "VM": _R, "VDI": _R, "userdevice": _S, "mode": _S, "bootable": _B,
            "type": _S},
    "VIF": {"uuid": _S, "VM": _R, "network": _R, "MAC": _S, "device": _S, "MTU": _I},
    "task": {"uuid": _S, "name_label": _S, "status": _S, "result": _S, "error_info": _L,
             "progress": _F, "created": _T},
}
_INT = re.compile(r"-?\d+")


@dataclass
class Finding:
    """One check's result: `outcome` ok | differs | missing | failed | skipped."""

    check: str
    outcome: str
    why: str
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.outcome in ("ok", "skipped")


def wire_type(value: Any) -> str:
    """The XAPI wire type `value` arrived as."""
    if isinstance(value, bool):
        return _B
    if isinstance(value, int):
        return "int"  # an XML-RPC <int>: XAPI's int64 should travel as a string
    if isinstance(value, float):
        return _F
    if isinstance(value, xmlrpc.client.DateTime):
        return _T
    if isinstance(value, dict):
        return _D
    if isinstance(value, list):
        return _L
    if isinstance(value, str):
        if value.startswith("OpaqueRef:"):
            return _R
        return _I if _INT.fullmatch(value) else _S
    return type(value).__name__


def _fits(expected: str, seen: str) -> bool:
    """Whether a value seen as `seen` is what a reader of `expected` takes: a string
    field may hold digits (a device number), a ref field may be OpaqueRef:NULL."""
    return seen == expected or (expected == _S and seen == _I)


def check_methods(client: PoolClient) -> Finding:
    """system.listMethods (without a session, as introspection is called): which of the
    methods Vauban calls the pool does not list."""
    answer = client.call_plain("system.listMethods")
    shape = "plain list" if isinstance(answer, list) else "XAPI result struct"
    listed = set(parse_result(answer, client.label) if isinstance(answer, dict) else answer)
    wanted = sorted(PLAIN_METHODS) + sorted(f"Async.{m}" for m in ASYNC_METHODS)
    absent = [m for m in wanted if m not in listed]
    data = {"answer": shape, "listed": len(listed), "used": len(wanted), "absent": absent}
    if absent:
        return Finding("methods", "missing", f"{len(absent)} of the {len(wanted)} methods "
                       f"Vauban calls are not listed: {', '.join(absent)}", data)
    return Finding("methods", "ok", f"all {len(wanted)} methods Vauban calls are listed",
                   data)


def class_types(records: Iterable[dict[str, Any]]) -> dict[str, list[str]]:
    """field -> the wire types seen in it, over `records`."""
    seen: dict[str, set[str]] = {}
    for record in records:
        for name, value in record.items():
            seen.setdefault(name, set()).add(wire_type(value))
    return {name: sorted(types) for name, types in sorted(seen.items())}


def check_class(client: PoolClient, cls: str) -> tuple[Finding, int]:
    """`<cls>.get_all_records`: the fields present and the wire types of those Vauban
    reads, against what it expects. Also the number of objects (for event counts)."""
    records = client.call(f"{cls}.get_all_records")
    if not isinstance(records, dict):
        return Finding(f"records.{cls}", "differs", f"answer is a {wire_type(records)}, "
                       "not a struct of ref -> record"), 0
    types = class_types(records.values())
    wanted = READ_FIELDS[cls]
    data: dict[str, Any] = {"objects": len(records), "fields": sorted(types),
                            "read": {f: types.get(f, []) for f in sorted(wanted)}}
    if not records:
        return Finding(f"records.{cls}", "skipped", "no objects: field types not seen",
                       data), 0
    absent = [f for f in sorted(wanted) if f not in types]
    odd = [f"{f} is {'/'.join(types[f])}, expected {wanted[f]}" for f in sorted(wanted)
           if f in types and not all(_fits(wanted[f], t) for t in types[f])]
    if absent:
        outcome, why = "missing", f"fields Vauban reads are absent: {', '.join(absent)}"
    elif odd:
        outcome, why = "differs", "; ".join(odd)
    else:
        outcome, why = "ok", f"{len(records)} objects, the {len(wanted)} fields read as expected"
    return Finding(f"records.{cls}", outcome, why, data), len(records)


def token_shape(token: Any) -> str:
    """A token's shape: each run of digits as N (the positions themselves change)."""
    return re.sub(r"\d+", "N", token) if isinstance(token, str) else wire_type(token)


def check_events(client: PoolClient, counts: dict[str, int]) -> Finding:
    """event.inject on the pool, then one event.from (short timeout) from its token: the
    answer's keys, the token shape, and valid_ref_counts against `counts` (class -> the
    objects get_all_records gave; a busy pool may differ by what changed meanwhile)."""
    pool_ref, = client.call("pool.get_all")
    token = client.call("event.inject", "pool", pool_ref)
    answer = client.call("event.from", [c.lower() for c in WATCHED], token, 1.0)
    if not isinstance(answer, dict):
        return Finding("events", "differs", f"event.from answered a {wire_type(answer)}")
    valid = answer.get("valid_ref_counts")
    got = valid if isinstance(valid, dict) else {}
    data: dict[str, Any] = {
        "inject_token": token_shape(token), "from_keys": sorted(answer),
        "from_token": token_shape(answer.get("token")),
        "events": len(answer.get("events") or []),
        "count_types": sorted({wire_type(v) for v in got.values()}),
        "valid_ref_counts": {c: got.get(c.lower()) for c in WATCHED}}
    problems = [f"no {key}" for key in ("events", "token", "valid_ref_counts")
                if key not in answer]
    problems += [f"{c}: {got.get(c.lower())} counted, {n} read" for c, n in counts.items()
                 if str(got.get(c.lower())) != str(n)]
    if not isinstance(token, str) or not token:
        problems.append(f"event.inject gave a {wire_type(token)} token")
    if problems:
        return Finding("events", "differs", "; ".join(problems), data)
    return Finding("events", "ok", f"token {data['from_token']}, counts agree with the "
                   "records read", data)


def pem_fingerprint(pem: str) -> str:
    """The SHA-256 of a PEM certificate's DER form (ValueError when it is no PEM)."""
    return fingerprint_of(ssl.PEM_cert_to_DER_cert(pem.strip()))


def check_certificates(client: PoolClient, url_host: str, pinned: str) -> Finding:
    """host.get_server_certificate of each host: its SHA-256 (the URL host's must be the
    pinned one: the certificate it presented)."""
    hosts = []
    problems = []
    for ref, record in sorted(client.call("host.get_all_records").items(),
                              key=lambda item: str(item[1].get("address"))):
        address = str(record.get("address"))
        try:
            sha = format_fingerprint(pem_fingerprint(str(
                client.call("host.get_server_certificate", ref))))
        except (ValueError, XapiError) as e:
            problems.append(f"{address}: no certificate ({e})")
            sha = ""
        if address == url_host and sha and sha != format_fingerprint(pinned):
            problems.append(f"{address}: its certificate is {sha}, it presented {pinned}")
        hosts.append({"uuid": record.get("uuid"), "name": record.get("name_label"),
                      "address": address, "sha256": sha})
    data: dict[str, Any] = {"hosts": hosts}
    if problems:
        return Finding("certificates", "differs", "; ".join(problems), data)
    return Finding("certificates", "ok", f"{len(hosts)} hosts, each with a certificate",
                   data)


def check_import_formats(client: PoolClient) -> Finding:
    """Whether `format=qcow2` imports are advertised: XAPI has no call that lists import
    formats, so "unknown"; the hosts' xapi versions are recorded for whoever reads it."""
    versions = sorted({str((r.get("software_version") or {}).get("xapi", "?"))
                       for r in client.call("host.get_all_records").values()})
    return Finding("import-formats", "skipped", "qcow2 import: unknown (XAPI lists no "
                   "import formats; Vauban sends VHD)", {"qcow2": "unknown",
                                                        "xapi_versions": versions})
