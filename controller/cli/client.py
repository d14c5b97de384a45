"""HTTP client for the region API, used by the CLI (and usable from scripts)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import requests

from controller.cli.remotes import DEFAULT_NAME, DEFAULT_URL, Remote, Store


class ApiError(Exception):
    """The API refused a request; the message is its problem document's detail."""

    def __init__(self, status: int, detail: str, problem: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.problem = problem or {}


@dataclass(frozen=True)
class Settings:
    url: str
    token: str | None
    ca_file: str | None

    @classmethod
    def load(cls, remote: str | None = None) -> Settings:
        """Environment (VAUBAN_URL, VAUBAN_TOKEN, VAUBAN_CA_FILE) over the remote named
        (`remote`), else the current one (controller.cli.remotes); RemoteError if
        `remote` is not known."""
        _name, saved = Store.load().chosen(remote)
        return cls(
            url=os.environ.get("VAUBAN_URL") or (saved.url if saved else None) or DEFAULT_URL,
            token=os.environ.get("VAUBAN_TOKEN") or (saved.token if saved else None),
            ca_file=os.environ.get("VAUBAN_CA_FILE") or (saved.ca_file if saved else None),
        )

    def save(self, remote: str | None = None) -> None:
        """Keep these as the remote `remote` (default: the current one, else "default"),
        which becomes the current one if none was."""
        store = Store.load()
        name = remote or store.current or DEFAULT_NAME
        store.remotes[name] = Remote(self.url, self.token, self.ca_file)
        store.current = store.current or name
        store.save()


def next_page(link: str | None) -> str | None:
    """The path below /api/v1 of the next page a Link header (RFC 8288) names, or None."""
    found = re.search(r'</api/v1([^>]*)>;\s*rel="next"', link or "")
    return found.group(1) if found else None


class Client:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.next_page: str | None = None
        self.http = requests.Session()
        # per request: requests lets REQUESTS_CA_BUNDLE override a session-wide `verify`
        self.verify: str | bool = settings.ca_file or True
        if settings.token:
            self.http.headers["Authorization"] = f"Bearer {settings.token}"

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The answer to `method` on /api/v1`path`; ApiError if refused. The next page a
        list's answer names (Link: <...>; rel="next") is kept in `next_page`."""
        url = self.settings.url.rstrip("/") + "/api/v1" + path
        try:
            r = self.http.request(method, url, timeout=kwargs.pop("timeout", 60),
                                  verify=self.verify, **kwargs)
        except requests.ConnectionError as e:
            raise ApiError(0, f"cannot reach the controller at {self.settings.url}: {e}") from e
        if r.status_code >= 400:
            raise refusal(r)
        self.next_page = next_page(r.headers.get("Link"))
        if r.status_code == 204 or not r.content:
            return None
        if not r.headers.get("Content-Type", "").startswith("application/json"):
            return r.text
        return r.json()

    def lines(self, path: str, params: dict[str, Any] | None = None) -> Iterator[str]:
        """GET `path` and yield its body line by line as it arrives (JSON lines), each
        with its newline; ApiError if the API refused the request."""
        url = self.settings.url.rstrip("/") + "/api/v1" + path
        try:
            with self.http.get(url, params=params, stream=True, timeout=60,
                               verify=self.verify) as r:
                if r.status_code >= 400:
                    raise refusal(r)
                for line in r.iter_lines(decode_unicode=False):
                    yield line.decode() + "\n"
        except requests.RequestException as e:
            raise ApiError(0, f"reading {path} from {self.settings.url} failed: {e}") from e

    def get(self, path: str, **kw: Any) -> Any:
        """The answer to GET `path`; for a list asked without a `limit`, every page of it
        (following each page's `Link: <...>; rel="next"`), as one list."""
        answer = self.request("GET", path, **kw)
        if "limit" in (kw.get("params") or {}) or not isinstance(answer, list):
            return answer
        items = list(answer)
        rest = {k: v for k, v in kw.items() if k != "params"}  # the link carries them
        while self.next_page is not None:
            items += self.request("GET", self.next_page, **rest)
        return items

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("POST", path, json=body, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("PUT", path, json=body, **kw)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def upload_image(self, stream: BinaryIO, params: dict[str, Any]) -> Any:
        return self.request("POST", "/images", params=params, data=stream, timeout=3600,
                            headers={"Content-Type": "application/octet-stream"})

    def stream_lines(self, path: str, params: dict[str, Any] | None,
                     headers: dict[str, str]) -> Iterator[str]:
        """GET `path` as a stream: yields "" once the answer began (the stream is open),
        then its lines without their ends. ApiError if refused, or when the stream breaks
        (status 0) or stays silent for STREAM_SILENCE_S."""
        url = self.settings.url.rstrip("/") + "/api/v1" + path
        try:
            with self.http.get(url, params=params, headers=headers, stream=True,
                               timeout=(60, STREAM_SILENCE_S), verify=self.verify) as r:
                if r.status_code >= 400:
                    raise refusal(r)
                yield ""
                for line in r.iter_lines(decode_unicode=False):
                    yield line.decode()
        except requests.RequestException as e:
            raise ApiError(0, f"the event stream of {self.settings.url} broke: {e}") from e

    def events(self, types: list[str] | None = None,
               after: int | None = None) -> Generator[StreamItem]:
        """The event stream (docs/events.md) from `after` (None: from now): an OPENED item
        first, then each event, id alone and comment as it comes. Ends with ApiError
        (status 0 when the stream broke: resume from the last id seen)."""
        params = {"types": ",".join(types)} if types else None
        headers = {"Last-Event-ID": str(after)} if after is not None else {}
        yield from parse_stream(self.stream_lines("/events", params, headers))

    def wait(self, op: dict[str, Any], on_progress: Callable[[dict[str, Any]], None],
             timeout: float = 1800) -> dict[str, Any]:
        """Follow an operation until it ends; ApiError if it failed, TimeoutError if too long.

        Its events are followed, not polled: once the stream is open the operation is read
        (one that ended already returns at once), then each of its events updates it; a
        stream that breaks is opened again from the last event seen, and the operation read
        again."""
        deadline = time.monotonic() + timeout
        last: int | None = None
        delay = 0.5
        while not _ended(op):
            stream = self.events(["operation"], last)
            try:
                for item in stream:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"operation {op['id']} still {op['state']} after "
                                           f"{timeout}s")
                    last = item.id if item.id is not None else last
                    if item is OPENED or item.type == "stream.reset":
                        op = self.get(f"/operations/{op['id']}")
                    elif item.type == "operation.changed" and item.data is not None and \
                            item.data["object"]["id"] == op["id"]:
                        op = {**op, **item.data["data"]}
                    else:
                        continue
                    on_progress(op)
                    if _ended(op):
                        break
            except ApiError as e:
                if e.status == 404:  # a controller without an event stream: poll it
                    return self._poll(op, on_progress, deadline, timeout)
                if e.status != 0 or time.monotonic() > deadline:
                    raise
                time.sleep(delay)  # the stream broke: open it again, less and less often
                delay = min(delay * 2, 10.0)
            finally:
                stream.close()
        if op["state"] == "failed":
            raise ApiError(0, f"{op['kind']} of {op['target_name']} failed: {op['error']}")
        return op

    def _poll(self, op: dict[str, Any], on_progress: Callable[[dict[str, Any]], None],
              deadline: float, timeout: float) -> dict[str, Any]:
        while not _ended(op):
            if time.monotonic() > deadline:
                raise TimeoutError(f"operation {op['id']} still {op['state']} after {timeout}s")
            time.sleep(POLL_S)  # polling interval of a controller that has no event stream
            op = self.get(f"/operations/{op['id']}")
            on_progress(op)
        if op["state"] == "failed":
            raise ApiError(0, f"{op['kind']} of {op['target_name']} failed: {op['error']}")
        return op


STREAM_SILENCE_S = 60.0  # the controller sends a comment every 15 s (events_keepalive_s)
POLL_S = 0.5


def refusal(r: requests.Response) -> ApiError:
    """The API's refusal as an ApiError: its problem document's detail, or the bare
    status where the body is no problem document (a proxy's page, a cut answer)."""
    try:
        problem = r.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        return ApiError(r.status_code, f"{r.status_code} {r.reason}")
    return ApiError(r.status_code, str(problem.get("detail", r.reason)), problem)


def _ended(op: dict[str, Any]) -> bool:
    return op["state"] in ("succeeded", "failed")


@dataclass(frozen=True)
class StreamItem:
    """One block of an event stream: an event (`type`, `data`), an id alone, a comment;
    or OPENED."""

    id: int | None
    type: str | None
    data: dict[str, Any] | None
    comment: str | None = None


OPENED = StreamItem(None, None, None, "opened")


def parse_stream(lines: Iterator[str]) -> Iterator[StreamItem]:
    """The blocks of a server-sent event stream from its lines ("" ends a block; the first
    "" of `lines` says the stream opened)."""
    opened = False
    fields: dict[str, str] = {}
    comment: str | None = None
    for line in lines:
        if not opened:
            opened = True
            yield OPENED
            continue
        if line:
            if line.startswith(":"):
                comment = line[1:].strip()
            else:
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
            continue
        if not fields and comment is None:
            continue
        raw_id = fields.get("id", "")
        yield StreamItem(int(raw_id) if raw_id.isdigit() else None, fields.get("event"),
                         json.loads(fields["data"]) if "data" in fields else None, comment)
        fields, comment = {}, None
