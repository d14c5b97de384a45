"""The `vauban` CLI answered by the controller's API through Flask's test client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from controller.cli import main as cli
from controller.cli.client import ApiError, Client, Settings, next_page
from tests.functional.helpers import Api


class ApiClient(Client):
    """The CLI's client, answered by the Flask test client instead of over HTTPS."""

    def __init__(self, api: Api) -> None:
        super().__init__(Settings(url="https://controller.invalid", token=None, ca_file=None))
        self.api = api

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.api.client.open("/api/v1" + path, method=method, headers=self.api.headers,
                                 query_string=kwargs.get("params"), json=kwargs.get("json"))
        if r.status_code >= 400:
            raise ApiError(r.status_code, r.json["detail"], r.json)  # type: ignore[index]
        self.next_page = next_page(r.headers.get("Link"))
        return r.json

    def lines(self, path: str, params: dict[str, Any] | None = None) -> Iterator[str]:
        r = self.api.client.get("/api/v1" + path, headers=self.api.headers, query_string=params)
        if r.status_code >= 400:
            raise ApiError(r.status_code, r.json["detail"], r.json)  # type: ignore[index]
        yield from r.get_data(as_text=True).splitlines(keepends=True)

    def stream_lines(self, path: str, params: dict[str, Any] | None,
                     headers: dict[str, str]) -> Iterator[str]:
        r = self.api.client.get("/api/v1" + path, headers={**self.api.headers, **headers},
                                query_string=params, buffered=False)
        if r.status_code >= 400:
            raise ApiError(r.status_code, r.json["detail"], r.json)  # type: ignore[index]
        yield ""
        try:
            buffer = ""
            for chunk in r.response:
                buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
                *complete, buffer = buffer.split("\n")
                yield from complete
        finally:
            r.close()


def cli_answered_by(api: Api, monkeypatch: pytest.MonkeyPatch) -> Api:
    """`api`, with the CLI talking to it (with whatever headers `api.headers` holds)."""
    monkeypatch.setattr(cli, "Client", lambda _settings: ApiClient(api))
    monkeypatch.setattr(cli.Settings, "load", classmethod(lambda cls, *_remote: None))
    return api
