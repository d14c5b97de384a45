"""The CLI reads every page of a list it asks without a limit, following Link headers."""

from __future__ import annotations

from typing import Any

from controller.cli.client import Client, Settings, next_page


class Paged(Client):
    """Answers /things in pages of two, naming the next page as the API does."""

    def __init__(self) -> None:
        super().__init__(Settings(url="https://controller.invalid", token=None, ca_file=None))
        self.asked: list[tuple[str, Any]] = []

    def request(self, method: str, path: str, **kw: Any) -> Any:
        self.asked.append((path, kw.get("params")))
        start = int(path.partition("cursor=")[2].partition("&")[0] or 0)
        items = list(range(5))[start:start + 2]
        self.next_page = next_page(f'</api/v1/things?cursor={start + 2}&limit=2>; rel="next"'
                                   if start + 2 < 5 else None)
        return items


def test_a_list_without_limit_is_read_to_its_end() -> None:
    c = Paged()
    assert c.get("/things", params={"name": "x"}) == [0, 1, 2, 3, 4]
    assert [p for p, _ in c.asked] == ["/things", "/things?cursor=2&limit=2",
                                       "/things?cursor=4&limit=2"]
    assert c.asked[0][1] == {"name": "x"} and c.asked[1][1] is None


def test_a_list_with_a_limit_is_one_page() -> None:
    c = Paged()
    assert c.get("/things", params={"limit": 2}) == [0, 1]
    assert len(c.asked) == 1


def test_next_page_reads_only_a_next_link_of_the_api() -> None:
    assert next_page('</api/v1/vms?cursor=abc&limit=5>; rel="next"') == "/vms?cursor=abc&limit=5"
    assert next_page(None) is None
    assert next_page('</api/v1/vms?cursor=abc>; rel="prev"') is None
    assert next_page('<https://elsewhere/x>; rel="next"') is None
