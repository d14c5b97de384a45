"""`PUT /import_raw_vdi`: a VDI's content over HTTP, as xapi's handler takes it.

Read from xapi (import_raw_vdi.ml, xapi_http.ml, importexport.ml; docs/design/xapi-plan.md
§1.13): `vdi` (ref or uuid), `format` (raw | vhd here), `task_id` and `session_id` come
from the query or a cookie (the cookie wins); the task, when given, ends `success` with
the VDI's ref as its result, or `failure`. What the simulator answers, checked in this
order (xapi's: credentials, the VDI, the redirect, then the request itself):

* no valid session: **401** (the task, if any, fails SESSION_AUTHENTICATION_FAILED);
* no such VDI: **404** (task fails HANDLE_INVALID);
* the receiving member is not the one the SR is reached through: **302** to that member
  (`Location: https://<its address>:<port><path>?<query>`; xapi writes the address
  alone, the port being 443 there), the body unread, the task left pending. Which
  member that is: the pool's `import_redirect` switch (None: any member imports);
* unknown format: **404** (task fails INTERNAL_ERROR), as xapi;
* `Transfer-Encoding` (chunked): **403**, as xapi ("chunked encoding not yet implemented");
* no `Content-Length`: **411** (xapi would read to the end of the connection; we insist);
* a raw body larger than the VDI's virtual_size: **500** before any byte is read, a
  VHD holding a larger disk: 500 once it is read (the task fails VDI_IO_ERROR; xapi
  would fail while writing);
* otherwise the body (raw bytes, or a fixed/dynamic VHD decoded by `vhd.py`) is written
  into the VDI's file and **200** answered once it is there (xapi sends its 200 first
  and completes the task later: clients wait on the task either way). An empty body
  (a client probing for a redirect) is answered 200 and changes nothing.
"""

from __future__ import annotations

import tempfile
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.xapi_sim import disks, vhd
from tests.xapi_sim.model import Session, Store
from tests.xapi_sim.wire import XapiFault

if TYPE_CHECKING:
    from tests.xapi_sim.server import Member

CHUNK = 1024 * 1024
FORMATS = ("raw", "vhd")


def request_params(path: str, cookies: list[str]) -> tuple[str, dict[str, str]]:
    """(path, parameters) of a request: its query, overridden by its cookies."""
    url = urllib.parse.urlsplit(path)
    params = dict(urllib.parse.parse_qsl(url.query))
    for header in cookies:
        for part in header.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep:
                params[name] = value
    return url.path, params


def session_of(store: Store, params: dict[str, str]) -> Session | None:
    """The live session the request names, or None."""
    try:
        return store.session(params.get("session_id"))
    except XapiFault:
        return None


class Refusal(Exception):
    """An HTTP answer other than success, and what the task (if any) fails with."""

    def __init__(self, status: int, reason: str, error: list[str] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status, reason)
        self.status, self.reason = status, reason
        self.error = error
        self.headers = headers or {}


def _find_vdi(store: Store, sess: Session, name: str) -> str:
    """The uuid of the VDI `name` (a ref of `sess`, or a uuid) names; Refusal 404."""
    key = sess.keys.get(name)
    if key is not None and key[0] == "VDI" and key in store.objects:
        return key[1]
    if ("VDI", name) in store.objects:
        return name
    raise Refusal(404, f"no VDI {name}", ["HANDLE_INVALID", "VDI", name])


def _plan(member: Member, path: str, params: dict[str, str], headers: Any,
          sess: Session) -> tuple[str, str, int]:
    """(VDI uuid, format, body length) of an import this member takes; Refusal else."""
    store = member.pool.store
    vdi = _find_vdi(store, sess, params.get("vdi", ""))
    target = member.pool.import_redirect
    if target is not None and member.pool.members[target] is not member:
        other = member.pool.members[target]  # xapi redirects before it looks further
        query = urllib.parse.urlsplit(path).query  # as xapi: the query, never the cookies
        location = f"https://{other.address}:{other.port}/import_raw_vdi?{query}"
        raise Refusal(302, "the SR is reached through another host",
                      headers={"Location": location})
    fmt = params.get("format", "raw")
    if fmt not in FORMATS:
        raise Refusal(404, f"unknown format {fmt}", ["INTERNAL_ERROR", f"Unknown format {fmt}"])
    if headers.get("Transfer-Encoding"):
        raise Refusal(403, "chunked encoding is not implemented for imports",
                      ["INTERNAL_ERROR", "import code cannot handle encoding: "
                       + headers["Transfer-Encoding"]])
    if headers.get("Content-Length") is None:
        raise Refusal(411, "Content-Length required")
    length = int(headers["Content-Length"])
    size = int(store.objects[("VDI", vdi)].fields["virtual_size"])
    if fmt == "raw" and length > size:
        raise Refusal(500, f"{length} bytes do not fit a VDI of {size}",
                      ["VDI_IO_ERROR", "Device I/O errors"])
    return vdi, fmt, length


def _receive(rfile: Any, length: int, out: Any) -> None:
    """Copy exactly `length` bytes of the body into `out`; OSError when the connection
    ends first."""
    left = length
    while left:
        chunk = rfile.read(min(CHUNK, left))
        if not chunk:
            raise ConnectionError(f"the body ended {left} bytes short")
        out.write(chunk)
        left -= len(chunk)


def _write(store: Store, vdi: str, fmt: str, length: int, rfile: Any) -> None:
    """The body into VDI `vdi`'s file; Refusal (500) if a VHD's disk does not fit."""
    target = disks.vdi_file(store, vdi)
    if fmt == "raw":
        with target.open("r+b") as out:
            _receive(rfile, length, out)
        return
    assert store.folder is not None
    fd, name = tempfile.mkstemp(dir=store.folder, suffix=".vhd")
    spooled = Path(name)
    try:
        with open(fd, "wb") as out:
            _receive(rfile, length, out)
        try:
            disk = vhd.virtual_size(spooled)
            size = int(store.objects[("VDI", vdi)].fields["virtual_size"])
            if disk > size:
                raise Refusal(500, f"a disk of {disk} bytes does not fit a VDI of {size}",
                              ["VDI_IO_ERROR", "Device I/O errors"])
            vhd.decode(spooled, target)
        except vhd.VhdError as e:
            raise Refusal(500, f"not a VHD: {e}", ["INTERNAL_ERROR", str(e)]) from e
    finally:
        spooled.unlink(missing_ok=True)


def handle_put(member: Member, path: str, headers: Any, rfile: Any) -> Refusal | None:
    """Serve one PUT on `member`: None once the body is in the VDI (answer 200), else the
    Refusal to answer. The task named by the request is finished either way."""
    store = member.pool.store
    url, params = request_params(path, headers.get_all("Cookie") or [])
    if url != "/import_raw_vdi":
        return Refusal(404, f"no handler for PUT {url}")
    with store.cond:
        sess = session_of(store, params)
        task = _task(store, sess, params.get("task_id"))
    try:
        if sess is None:
            raise Refusal(401, "Unauthorised", ["SESSION_AUTHENTICATION_FAILED"])
        with store.cond:
            vdi, fmt, length = _plan(member, path, params, headers, sess)
        if length:
            _write(store, vdi, fmt, length, rfile)
            member.pool.transfers.append({"kind": "import", "member": member.address,
                                          "object": vdi})
    except Refusal as refusal:
        if task is not None and refusal.status != 302:
            disks.finish_task(store, task, error=refusal.error or ["INTERNAL_ERROR"])
        return refusal
    except OSError as e:
        if task is not None:
            disks.finish_task(store, task, error=["INTERNAL_ERROR", str(e)])
        raise
    if task is not None:
        with store.cond:
            ref = sess.ref(("VDI", vdi))
        disks.finish_task(store, task, result=f"<value>{ref}</value>")
    return None


def _task(store: Store, sess: Session | None, ref: str | None) -> str | None:
    """The uuid of the task `ref` names (in `sess`, else any session's), or None."""
    if ref is None:
        return None
    sessions = [sess] if sess is not None else list(store.sessions.values())
    for candidate in sessions:
        key = candidate.keys.get(ref)
        if key is not None and key[0] == "task" and key in store.objects:
            return key[1]
    return None
