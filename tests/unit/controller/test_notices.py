"""Change notices' payloads: every node named once, each payload under PostgreSQL's limit."""

from __future__ import annotations

import pytest

from controller.notices import MAX_PAYLOAD, parse, payloads


def test_a_few_nodes_fit_in_one_notice_that_reads_back() -> None:
    [one] = payloads("origin1", ["b", "a", "b"])
    assert parse(one) == ("origin1", ["a", "b"])


def test_many_nodes_are_split_into_notices_under_the_limit() -> None:
    ids = [f"{i:08d}-0000-0000-0000-000000000000" for i in range(1000)]
    out = payloads("o", ids)
    assert len(out) > 1
    assert all(len(p.encode()) < MAX_PAYLOAD for p in out)
    assert sorted(n for p in out for n in parse(p)[1]) == sorted(ids)
    assert {parse(p)[0] for p in out} == {"o"}


@pytest.mark.parametrize("bad", ["", "a,b", "a b"])
def test_an_id_that_could_not_be_read_back_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="cannot be sent"):
        payloads("o", [bad])


@pytest.mark.parametrize("payload", ["", "origin-only", " a,b", "o "])
def test_a_foreign_payload_is_not_taken_for_a_notice(payload: str) -> None:
    with pytest.raises(ValueError, match="not a change notice"):
        parse(payload)
