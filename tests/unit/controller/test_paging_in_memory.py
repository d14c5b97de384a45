"""Pages of a list built in memory (the GPUs): the same order and cursors as a table's."""

from __future__ import annotations

import pytest

from controller.api.paging import InvalidCursor, encode, page_of

ITEMS = [("n2", "0000:3b:00.0"), ("n1", "0000:18:00.0"), ("n1", "0000:3b:00.0"),
         ("n2", "0000:18:00.0"), ("n3", "0000:18:00.0")]


def pages(limit: int) -> list[list[tuple[str, str]]]:
    out, cursor = [], None
    while True:
        p = page_of(ITEMS, lambda i: i[0], lambda i: i[1], limit, cursor)
        out.append(p.items)
        if p.next_cursor is None:
            return out
        cursor = p.next_cursor


def test_pages_follow_key_then_id_and_end_without_a_cursor() -> None:
    assert pages(2) == [[("n1", "0000:18:00.0"), ("n1", "0000:3b:00.0")],
                        [("n2", "0000:18:00.0"), ("n2", "0000:3b:00.0")],
                        [("n3", "0000:18:00.0")]]
    assert pages(5) == [sorted(ITEMS)]


def test_a_cursor_of_another_list_only_moves_the_start() -> None:
    # a table's cursor may carry an integer id: compared as text, never a TypeError
    p = page_of(ITEMS, lambda i: i[0], lambda i: i[1], 10, encode("n1", 0))
    assert p.items == sorted(ITEMS) and p.next_cursor is None
    p = page_of(ITEMS, lambda i: i[0], lambda i: i[1], 10, encode("n2", 7))
    assert p.items == [("n3", "0000:18:00.0")]


def test_a_cursor_that_is_not_one_is_refused() -> None:
    with pytest.raises(InvalidCursor):
        page_of(ITEMS, lambda i: i[0], lambda i: i[1], 10, "bm90IGpzb24")
    with pytest.raises(InvalidCursor):  # a number where a node name belongs
        page_of(ITEMS, lambda i: i[0], lambda i: i[1], 10, encode(5, "x"))
